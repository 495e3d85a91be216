--[==[ apply: add one shopper's new signals to its decaying score and evaluate its tier.
The same maths, step for step, as stream/scoring/reference.py `apply` (tested to agree).

KEYS[1]  <app>:{<shopper>}:score    hash (layout below)
KEYS[2]  <app>:{<shopper>}:applied  sorted set: signal id -> signal time (dedupe)
KEYS[3]  <app>:{<shopper>}:last     string: "<seq>\n<now>\n<result JSON>" of the last call
         that applied signals, or of the last decay call that changed something (sent
         again when that batch, or that decay call, is processed again)
ARGV[1]  JSON {"now": epoch s | null,
               "cfg": {"low","mid","high","hysteresis" (fraction),"cap" (ids kept)},
               "signals": [{"id","t" (epoch s),"p" (points),"h" (half-life s),"rule",
                            "cat" | null,"reset" (bool),"sup" (scope key) | null,"until",
                            "g" (group: the scoring order, before time)}]}
RETURNS  JSON {"from","to","score","at","seq","deadline" ("" = none),"ttl" (s),"applied",
               "changes": [{"from","to","score","at","seq","reason","top","cause"}],
               "top": [[rule, points]], "sup": [[scope, until]], "unsup": [scope],
               "ids": [newly applied signal ids], "reset": last purchase time ("" = none),
               "active": [active suppression scope keys, sorted],
               "was": [the keys active before the call, sorted],
               "after": {new signal id: seq just after it was scored},
               "held": {new signal id: [suppression keys in force just after it was
                        scored, sorted]} (only signals with some)}
         numbers as "%.17g" strings, so nothing is rounded on the way out.
Hash fields: tier, seq, T (last evaluation, epoch s), reset (epoch s of the last purchase),
  s|<h> = "v r"  one component per half-life class h (v points at time r)
  r|<rule> = "v r h"   per rule, for the top contributors
  c|<h>|<category> = "v r"  per category
  x|<scope> = until     active suppressions
Signals are applied by group (what one event fired, in the order the events came), then
event time; the tier is evaluated after each group and time, and at every decay crossing
or suppression end in between, then up to "now", so the transitions never depend on how
signals were batched.
Event time comes in ARGV; the script never reads TIME. It sets the hash's TTL itself.
]==]
local EPSILON = 0.01
local BISECT_STEPS = 60
local NEWTON_STEPS = 100
local RESOLUTION = 1e-6
local LN2 = 0.6931471805599453
local MIN_TTL = 3600.0
local TOP = 5
local TIERS = {"none", "low", "mid", "high"}

local function fmt(x) return string.format("%.17g", x) end
local function split(s)
  local out = {}
  for part in string.gmatch(s, "[^ ]+") do out[#out + 1] = tonumber(part) end
  return out
end

local args = cjson.decode(ARGV[1])
local cfg = args.cfg
local thresholds = {low = cfg.low, mid = cfg.mid, high = cfg.high}

-- load the hash
local s, rules, cats, x = {}, {}, {}, {}
local tier, seq, T, reset = "none", 0, nil, nil
local flat = redis.call("HGETALL", KEYS[1])
for i = 1, #flat, 2 do
  local k, v = flat[i], flat[i + 1]
  local kind, rest = string.match(k, "^(%a)|(.*)$")
  if kind == "s" then s[tonumber(rest)] = split(v)
  elseif kind == "r" then rules[rest] = split(v)
  elseif kind == "c" then cats[rest] = split(v)
  elseif kind == "x" then x[rest] = tonumber(v)
  elseif k == "tier" then tier = v
  elseif k == "seq" then seq = tonumber(v)
  elseif k == "T" then T = tonumber(v)
  elseif k == "reset" then reset = tonumber(v)
  end
end

local function add(comp, p, t, h)
  if comp == nil then return {p, t} end
  local v, r = comp[1], comp[2]
  if t <= r then return {v + p * 2 ^ (-(r - t) / h), r} end
  return {v * 2 ^ (-(t - r) / h) + p, t}
end
local function decay(v, r, h, t) return v * 2 ^ (-(t - r) / h) end
local function sorted_keys(tbl)
  local keys = {}
  for k in pairs(tbl) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end
local was = sorted_keys(x)  -- the suppressions in force before this call
local function score_with(hs, t)  -- hs: the half-lives, sorted (the summation order)
  local total = 0.0
  for _, h in ipairs(hs) do total = total + decay(s[h][1], s[h][2], h, t) end
  return total
end
local s_order = nil  -- sorted_keys(s), kept until s changes (set to nil there)
local function s_keys()
  if s_order == nil then s_order = sorted_keys(s) end
  return s_order
end
local function score_at(t) return score_with(s_keys(), t) end

local function tier_for(sc, prev)
  local up, up_rank = "none", 1
  for i = 2, 4 do
    if sc >= thresholds[TIERS[i]] then up, up_rank = TIERS[i], i end
  end
  local rank = 1
  for i = 1, 4 do if TIERS[i] == prev then rank = i end end
  if up_rank >= rank then return up end
  for i = rank, 2, -1 do
    if sc >= thresholds[TIERS[i]] * (1.0 - cfg.hysteresis) then return TIERS[i] end
  end
  return "none"
end

local function bisect(hs, at, floor)  -- negative components: not convex
  local lo, hi = at, at + 64.0 * hs[#hs]
  if score_with(hs, hi) >= floor then return nil end
  for _ = 1, BISECT_STEPS do
    local mid = lo + (hi - lo) / 2.0
    if score_with(hs, mid) < floor then hi = mid else lo = mid end
  end
  return hi
end

local function demotion_time(at)
  if thresholds[tier] == nil or next(s) == nil then return nil end
  local floor = thresholds[tier] * (1.0 - cfg.hysteresis)
  local hs = s_keys()  -- the summation order
  for _, h in ipairs(hs) do
    if s[h][1] < 0 then return bisect(hs, at, floor) end
  end
  -- convex and decreasing: Newton from the left, started at the latest single crossing
  local t = at
  for _, h in ipairs(hs) do
    local v, r = s[h][1], s[h][2]
    if v > floor then t = math.max(t, r + h * (math.log(v / floor) / LN2)) end
  end
  for _ = 1, NEWTON_STEPS do
    local total, slope = 0.0, 0.0
    for _, h in ipairs(hs) do
      local term = s[h][1] * 2 ^ (-(t - s[h][2]) / h)
      total = total + term
      slope = slope + term / h
    end
    if total < floor then return t end
    t = t + math.max((total - floor) / (slope * LN2), RESOLUTION)
  end
  return bisect(hs, at, floor)
end

local function next_deadline()
  local deadline = demotion_time(T)
  for _, u in pairs(x) do
    if deadline == nil or u < deadline then deadline = u end
  end
  return deadline
end

local top_t, top_last = nil, nil  -- the last top_at, kept until t or the rules change
local function top_at(t)
  if top_t == t then return top_last end
  local top = {}
  for rule, c in pairs(rules) do
    local p = decay(c[1], c[2], c[3], t)
    if math.abs(p) >= EPSILON then top[#top + 1] = {rule, p} end
  end
  table.sort(top, function(a, b)
    if math.abs(a[2]) ~= math.abs(b[2]) then return math.abs(a[2]) > math.abs(b[2]) end
    return a[1] < b[1]
  end)
  local out = {}
  for i = 1, math.min(TOP, #top) do out[i] = {top[i][1], fmt(top[i][2])} end
  top_t, top_last = t, out
  return out
end

local changes, unsup = {}, {}
local function evaluate(reason, cause)
  for _, k in ipairs(sorted_keys(x)) do
    if x[k] <= T then unsup[#unsup + 1] = k; x[k] = nil end
  end
  local prev = tier
  local sc = score_at(T)
  local was = prev
  if was == "suppressed" then was = "none" end
  local new_tier
  if x["all"] ~= nil then new_tier = "suppressed" else new_tier = tier_for(sc, was) end
  if new_tier == prev then return end
  if (prev == "suppressed") ~= (new_tier == "suppressed") then reason = "suppression" end
  seq = seq + 1
  tier = new_tier
  changes[#changes + 1] = {from = prev, to = new_tier, score = fmt(sc), at = fmt(T), seq = seq,
                           reason = reason, top = top_at(T), cause = cause or ""}
end

local MAX_STEPS = 16
local function due_by(until_t)
  for _, u in pairs(x) do if u <= until_t then return true end end
  if thresholds[tier] == nil or next(s) == nil then return false end
  return score_at(until_t) < thresholds[tier] * (1.0 - cfg.hysteresis)
end

local function advance(until_t)
  for _ = 1, MAX_STEPS do
    if not due_by(until_t) then return end  -- one score check instead of a bisection
    local due = next_deadline()
    if due == nil or due > until_t then return end
    T = due
    evaluate("decay", nil)
  end
end

-- dedupe by id, then apply by group, then time
local signals = args.signals
table.sort(signals, function(a, b)
  if a.g ~= b.g then return a.g < b.g end
  return a.t < b.t or (a.t == b.t and a.id < b.id)
end)
local previous = tier
local seq_before = seq
local new_ids, fresh, suppressed, added, duplicates = {}, {}, {}, {}, {}
for _, sig in ipairs(signals) do
  if not redis.call("ZSCORE", KEYS[2], sig.id) then
    redis.call("ZADD", KEYS[2], sig.t, sig.id)
    new_ids[#new_ids + 1] = sig.id
    fresh[#fresh + 1] = sig
    added[sig.id] = true
  elseif not added[sig.id] then
    duplicates[#duplicates + 1] = sig.id  -- applied by an earlier call
  end
end
local after = {}  -- new signal id -> seq just after it was scored
local held = {}  -- new signal id -> suppression keys in force just after (if any)
local i = 1
while i <= #fresh do
  local t, g, first = fresh[i].t, fresh[i].g, i
  if T ~= nil and t > T then advance(t) end
  local reset_seen, last_id = false, nil
  while i <= #fresh and fresh[i].g == g and fresh[i].t == t do
    local sig = fresh[i]
    last_id = sig.id
    i = i + 1
    if sig.sup ~= nil and sig.sup ~= cjson.null then
      if x[sig.sup] == nil or x[sig.sup] < sig["until"] then
        x[sig.sup] = sig["until"]
        suppressed[#suppressed + 1] = {sig.sup, fmt(sig["until"])}
      end
    end
    if sig.reset then
      if reset == nil or sig.t > reset then
        reset = sig.t
        s, rules, cats = {}, {}, {}
        s_order, top_t = nil, nil
        reset_seen = true
      end
    elseif (reset == nil or sig.t >= reset) and sig.p ~= 0 then
      local h = sig.h
      if s[h] == nil then s_order = nil end
      s[h] = add(s[h], sig.p, sig.t, h)
      top_t = nil
      local rc = rules[sig.rule]
      local nr = add(rc and {rc[1], rc[2]} or nil, sig.p, sig.t, h)
      rules[sig.rule] = {nr[1], nr[2], h}
      if sig.cat ~= nil and sig.cat ~= cjson.null and sig.cat ~= "" then
        local key = fmt(h) .. "|" .. sig.cat
        cats[key] = add(cats[key], sig.p, sig.t, h)
      end
    end
  end
  if T == nil or t > T then T = t end
  evaluate(reset_seen and "purchase" or "signal", last_id)
  local keys = sorted_keys(x)
  for k = first, i - 1 do
    after[fresh[k].id] = seq
    if #keys > 0 then held[fresh[k].id] = keys end
  end
end
if args.now ~= nil and args.now ~= cjson.null then
  if T == nil then
    T = args.now
  elseif args.now > T then
    advance(args.now)
    T = args.now
    evaluate("decay", nil)
  end
end
if T == nil then T = 0.0 end
local score = score_at(T)
local deadline = next_deadline()
local top_out = top_at(T)

-- prune what is negligible, compute the TTL, write back
local ttl = MIN_TTL
for _, h in ipairs(sorted_keys(s)) do
  local now_v = math.abs(decay(s[h][1], s[h][2], h, T))
  if now_v < EPSILON then s[h] = nil; s_order = nil
  elseif now_v / EPSILON > 1 then
    ttl = math.max(ttl, h * (math.log(now_v / EPSILON) / math.log(2)))
  end
end
for _, rule in ipairs(sorted_keys(rules)) do
  local c = rules[rule]
  if math.abs(decay(c[1], c[2], c[3], T)) < EPSILON then rules[rule] = nil end
end
for _, key in ipairs(sorted_keys(cats)) do
  local h = tonumber(string.match(key, "^([^|]+)|"))
  if math.abs(decay(cats[key][1], cats[key][2], h, T)) < EPSILON then cats[key] = nil end
end
for _, u in pairs(x) do ttl = math.max(ttl, u - T) end
local count = redis.call("ZCARD", KEYS[2])
if count > cfg.cap then redis.call("ZREMRANGEBYRANK", KEYS[2], 0, count - cfg.cap - 1) end

if #fresh == 0 then
  -- No new signal: the components, rules and categories only lost what was pruned, and
  -- the suppressions what ended. Write what moved and delete what went (and any field
  -- this version does not write); the stored strings of the rest are what a rewrite
  -- would give ("%.17g" round-trips), so a decay call costs less (docs/performance.md).
  local kept = {tier = true, seq = true, T = true, reset = reset ~= nil}
  local gone = {}
  for i = 1, #flat, 2 do
    local k = flat[i]
    local kind, rest = string.match(k, "^(%a)|(.*)$")
    local keep
    if kind == "s" then keep = s[tonumber(rest)] ~= nil
    elseif kind == "r" then keep = rules[rest] ~= nil
    elseif kind == "c" then keep = cats[rest] ~= nil
    elseif kind == "x" then keep = x[rest] ~= nil
    else keep = kept[k] end
    if not keep then gone[#gone + 1] = k end
  end
  if #gone > 0 then redis.call("HDEL", KEYS[1], unpack(gone)) end
  redis.call("HSET", KEYS[1], "tier", tier, "seq", seq, "T", fmt(T))
else
  local fields = {"tier", tier, "seq", seq, "T", fmt(T)}
  if reset ~= nil then fields[#fields + 1] = "reset"; fields[#fields + 1] = fmt(reset) end
  for h, c in pairs(s) do
    fields[#fields + 1] = "s|" .. fmt(h); fields[#fields + 1] = fmt(c[1]) .. " " .. fmt(c[2])
  end
  for rule, c in pairs(rules) do
    fields[#fields + 1] = "r|" .. rule
    fields[#fields + 1] = fmt(c[1]) .. " " .. fmt(c[2]) .. " " .. fmt(c[3])
  end
  for key, c in pairs(cats) do
    fields[#fields + 1] = "c|" .. key; fields[#fields + 1] = fmt(c[1]) .. " " .. fmt(c[2])
  end
  for k, u in pairs(x) do fields[#fields + 1] = "x|" .. k; fields[#fields + 1] = fmt(u) end
  redis.call("DEL", KEYS[1])
  redis.call("HSET", KEYS[1], unpack(fields))
end
local ttl_ms = math.floor(ttl * 1000)
redis.call("PEXPIRE", KEYS[1], ttl_ms)
redis.call("PEXPIRE", KEYS[2], ttl_ms)

-- A batch processed again after a crash (its first run applied these signals, then died
-- before its output was sent): that run's output comes back ahead of this one's, with
-- the same ids. Only while no transition has happened since; see reference._merged.
local function concat(a, b)
  local out = {}
  for _, v in ipairs(a) do out[#out + 1] = v end
  for _, v in ipairs(b) do out[#out + 1] = v end
  return out
end
local is_decay = #signals == 0 and args.now ~= nil and args.now ~= cjson.null
local repeat_decay = is_decay and #changes == 0 and #unsup == 0
if #duplicates > 0 or repeat_decay then
  local stored = redis.call("GET", KEYS[3])
  if stored then
    -- "<seq>\n<now or empty>\n<JSON>" (before: "<seq>\n<JSON>")
    local nl = string.find(stored, "\n", 1, true)
    local rest = string.sub(stored, nl + 1)
    local last_now = nil
    if string.sub(rest, 1, 1) ~= "{" then
      local nl2 = string.find(rest, "\n", 1, true)
      last_now = tonumber(string.sub(rest, 1, nl2 - 1))
      rest = string.sub(rest, nl2 + 1)
    end
    if tonumber(string.sub(stored, 1, nl - 1)) == seq_before then
      local last = cjson.decode(rest)
      local covered = false
      if #duplicates > 0 then
        local ids = {}
        for _, id in ipairs(last.ids) do ids[id] = true end
        covered = true
        for _, id in ipairs(duplicates) do
          if not ids[id] then covered = false; break end
        end
      elseif last_now ~= nil and last_now == args.now then
        -- The same decay call again: the sweep's index entry was not moved on (a crash
        -- before its output was sent), so that output comes back, with the same ids.
        covered = true
      end
      if covered then
        previous = last.from
        changes = concat(last.changes, changes)
        suppressed = concat(last.sup, suppressed)
        unsup = concat(last.unsup, unsup)
        new_ids = concat(last.ids, new_ids)
        was = last.was or was
        if type(last.after) == "table" then
          for id, n in pairs(last.after) do
            if after[id] == nil then after[id] = n end
          end
        end
        if type(last.held) == "table" then
          for id, keys in pairs(last.held) do
            if held[id] == nil then held[id] = keys end
          end
        end
      end
    end
  end
end

local out = cjson.encode({
  from = previous, to = tier, score = fmt(score), at = fmt(T), seq = seq,
  deadline = deadline and fmt(deadline) or "", ttl = fmt(ttl), changes = changes,
  applied = #new_ids, top = top_out, sup = suppressed, unsup = unsup, ids = new_ids,
  reset = reset and fmt(reset) or "", active = sorted_keys(x), was = was, after = after,
  held = held,
})
if #new_ids > 0 or (is_decay and (#changes > 0 or #unsup > 0)) then
  local call_now = ""
  if args.now ~= nil and args.now ~= cjson.null then call_now = fmt(args.now) end
  redis.call("SET", KEYS[3], seq .. "\n" .. call_now .. "\n" .. out, "PX", ttl_ms)
end
return out
