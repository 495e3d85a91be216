--[==[ fence: one batch's writes to one partition, made only by the partition's owner.

KEYS[1]   <app>:epoch:{<p>}  the partition's epoch (each new owner increments it)
KEYS[2..] one key per write, all of the same partition (one hash tag: one cluster slot)
ARGV[1]   the writer's epoch
ARGV[2..] per write, in KEYS' order: the command, its argument count, its arguments
RETURNS   the number of writes made; or the error FENCED (a newer owner holds the
          partition: this writer is a zombie, and writes nothing), or NOEPOCH (the epoch
          is gone: Redis lost its data), or EPOCHLOST (the epoch went back behind the
          writer's: Redis lost the last writes, the increment among them)
]==]
local held = redis.call("GET", KEYS[1])
if not held then
  return redis.error_reply("NOEPOCH " .. KEYS[1] .. " is missing")
end
if tonumber(held) < tonumber(ARGV[1]) then
  return redis.error_reply("EPOCHLOST " .. KEYS[1] .. " is " .. held .. ", behind " .. ARGV[1])
end
if held ~= ARGV[1] then
  return redis.error_reply("FENCED " .. KEYS[1] .. " is " .. held .. ", not " .. ARGV[1])
end
local a = 2
for k = 2, #KEYS do
  local n = tonumber(ARGV[a + 1])
  redis.call(ARGV[a], KEYS[k], unpack(ARGV, a + 2, a + 1 + n))
  a = a + 2 + n
end
return #KEYS - 1
