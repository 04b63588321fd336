-- entry.lua: the bytes stored for one waiting message (in a ready list or the delayed set).
--
-- Layout (7-byte header, then the id and the message body, untouched):
--   0xCE 0x1A   magic: tells a celeriac entry from bytes pushed by hand
--   priority    1 byte, 0..9
--   deliveries  2 bytes, big-endian: hand-outs so far
--   id length   2 bytes, big-endian
--   id          the compact task id (see keys.py: a UUID is stored as 17 bytes; never
--               empty, so an id length of 0 marks bytes that are not an entry)
--   body        the message bytes, never decoded here
-- One list element holds everything a fetch needs, which keeps a queued task small.

local function pack_entry(cid, priority, deliveries, body)
  if deliveries > 65535 then deliveries = 65535 end
  return string.char(0xCE, 0x1A, priority, math.floor(deliveries / 256), deliveries % 256,
    math.floor(#cid / 256), #cid % 256) .. cid .. body
end

-- cid, priority, deliveries of an entry, without copying its body; nil when the bytes
-- are not a celeriac entry.
local function entry_header(entry)
  if #entry < 7 then return nil end
  local m1, m2, priority, d1, d2, l1, l2 = string.byte(entry, 1, 7)
  local id_length = l1 * 256 + l2
  if m1 ~= 0xCE or m2 ~= 0x1A or priority > 9 or id_length == 0 or #entry < 7 + id_length then
    return nil
  end
  return string.sub(entry, 8, 7 + id_length), priority, d1 * 256 + d2
end

-- cid, priority, deliveries, body; or nil when the bytes are not a celeriac entry.
local function unpack_entry(entry)
  local cid, priority, deliveries = entry_header(entry)
  if not cid then return nil end
  return cid, priority, deliveries, string.sub(entry, 8 + #cid)
end
