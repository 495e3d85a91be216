"""The fault suite: real workers, broker and Redis servers, faults injected mid-stream,
outputs compared with replay. See test_faults.py and docs/operations.md ("Fault suite")."""
