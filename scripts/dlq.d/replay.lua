-- replay.lua -- replays one dead letter: re-adds the original fields of
-- entry ARGV[1] of KEYS[2] (<stream>.dlq) to KEYS[1] (<stream>) and deletes
-- the dead letter, atomically (a script runs alone on the server).
--
-- A dead letter is the original entry's fields followed by the four the
-- consumer appended: error, group, deliveries and failures (DESIGN.md §5,
-- DLQ_* in ripple/streams.h). The last occurrence of each of those is
-- dropped, so an original field of the same name survives. An explicit `id` field is kept: it is the de-duplication
-- key, so a replayed event never takes effect twice.
--
-- The one replay of the project: scripts/dlq runs it with EVAL, and the
-- console module embeds it at build time and runs it the same way.
--
-- Returns the new entry id in KEYS[1]. Errors: "NOENTRY ..." when the dead
-- letter is not there, "EMPTY ..." when it holds no original field.
local stream, dlq, id = KEYS[1], KEYS[2], ARGV[1]
local rows = redis.call('XRANGE', dlq, id, id)
if #rows == 0 then
    return redis.error_reply('NOENTRY no entry ' .. id .. ' in ' .. dlq)
end
local flat = rows[1][2]
local drop = {}
for _, name in ipairs({'error', 'group', 'deliveries', 'failures'}) do
    for i = #flat - 1, 1, -2 do
        if flat[i] == name and not drop[i] then
            drop[i] = true
            break
        end
    end
end
local args = {'XADD', stream, '*'}
for i = 1, #flat - 1, 2 do
    if not drop[i] then
        args[#args + 1] = flat[i]
        args[#args + 1] = flat[i + 1]
    end
end
if #args == 3 then
    return redis.error_reply('EMPTY entry ' .. id .. ' of ' .. dlq .. ' has no original fields')
end
local new_id = redis.call(unpack(args))
redis.call('XDEL', dlq, id)
return new_id
