-- streams.lua -- the console's stream report, in one round trip.
--
-- KEYS come in pairs: a stream and its dead-letter stream (<stream>.dlq).
-- ARGV[1]: how many of the last dead letters to show per stream;
-- ARGV[2]: bytes kept of a dead letter's data or error (longer: cut);
-- ARGV[3]: consumers shown per group.
-- Returns a JSON array, one object per stream, in KEYS order:
--   {name, exists, length, last_id, entries_added,
--    groups: [{name, consumers, pending, lag, last_delivered_id, entries_read,
--              consumer_list: [{name, pending, idle_ms}]}],
--    dlq: {length, letters: [{id, type, event_id, trace, error, group,
--                             deliveries, data}]}}
-- An empty list comes back as {} (cjson cannot tell); lag is null when
-- Redis cannot compute it (XINFO GROUPS says nil). Read-only: it runs the
-- XINFO, XLEN and XREVRANGE a person would type, atomically, so the numbers
-- of one stream are one moment's.
local letters, cut, max_consumers = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local function map(flat)
    local t = {}
    for i = 1, #flat - 1, 2 do
        t[flat[i]] = flat[i + 1]
    end
    return t
end

local function value(v)
    if v == false or v == nil then
        return cjson.null
    end
    return v
end

local function short(v)
    if type(v) ~= 'string' then
        return value(v)
    end
    if #v > cut then
        return string.sub(v, 1, cut) .. '...'
    end
    return v
end

local function consumers(key, group)
    local out = {}
    local ok, list = pcall(redis.call, 'XINFO', 'CONSUMERS', key, group)
    if not ok then
        return out
    end
    for i = 1, math.min(#list, max_consumers) do
        local c = map(list[i])
        out[#out + 1] = {name = c['name'], pending = c['pending'], idle_ms = c['idle']}
    end
    return out
end

local function groups(key)
    local out = {}
    local ok, list = pcall(redis.call, 'XINFO', 'GROUPS', key)
    if not ok then
        return out
    end
    for i = 1, #list do
        local g = map(list[i])
        out[#out + 1] = {
            name = g['name'], consumers = g['consumers'], pending = g['pending'],
            lag = value(g['lag']), last_delivered_id = g['last-delivered-id'],
            entries_read = value(g['entries-read']),
            consumer_list = consumers(key, g['name']),
        }
    end
    return out
end

local function dead_letters(dlq)
    local out = {length = 0, letters = {}}
    local ok, n = pcall(redis.call, 'XLEN', dlq)
    if not ok or n == 0 or letters == 0 then
        out.length = ok and n or 0
        return out
    end
    out.length = n
    for _, entry in ipairs(redis.call('XREVRANGE', dlq, '+', '-', 'COUNT', letters)) do
        local f = map(entry[2]) -- the last of a repeated field wins: error, group, deliveries
        out.letters[#out.letters + 1] = {
            id = entry[1], type = short(f['type']), event_id = short(f['id']),
            trace = short(f['trace']), error = short(f['error']), group = short(f['group']),
            deliveries = short(f['deliveries']), data = short(f['data']),
        }
    end
    return out
end

local report = {}
for i = 1, #KEYS - 1, 2 do
    local key = KEYS[i]
    local s = {name = key, exists = false, length = 0, last_id = cjson.null,
               entries_added = cjson.null, groups = {}}
    local ok, info = pcall(redis.call, 'XINFO', 'STREAM', key)
    if ok then
        info = map(info)
        s.exists = true
        s.length = info['length']
        s.last_id = info['last-generated-id']
        s.entries_added = value(info['entries-added'])
        s.groups = groups(key)
    end
    s.dlq = dead_letters(KEYS[i + 1])
    report[#report + 1] = s
end
return cjson.encode(report)
