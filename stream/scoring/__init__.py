"""Decaying scores, tiers and suppression: a pure reference (`reference.py`) and the same
maths as one Redis Lua script (`lua/apply.lua`) behind one store class (`store.py`)."""
