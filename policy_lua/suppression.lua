--[[
kumo-suppression: per-sending-domain suppression list, enforced in kumod.

The Python side (`kumo-suppress`) learns suppressions from kumod's logs and exports one
snapshot file per sending domain (`<dir>/<domain>.json` or `.toml`). This module reads
those snapshots in-process and stops mail to suppressed (recipient, sending domain)
pairs at injection time.

Usage (at the TOP LEVEL of init.lua, while the policy loads, and BEFORE the queue
helper (policy-extras.queue) sets up its get_queue_config handler: get_queue_config
handlers run in registration order and the queue helper answers for every queue):

  local kumo = require 'kumo'
  local suppression = require 'suppression'
  local sup = suppression:new {
    config = '/etc/kumo-suppression/config.toml', -- reads [policy], [keys], [export]
    -- optional overrides (they win over the config file):
    -- snapshot_dir = '/var/lib/kumo-suppression/snapshots',
    -- format = 'json',                 -- 'json' | 'toml'
    -- sending_domain = 'from_header',  -- 'from_header' | 'sender' | 'meta:NAME'
    -- aliases = { ['bounce.example.com'] = 'example.com' }, -- [keys.aliases]: applied to
    --                                  -- the envelope sender's domain, as the exporter does
    -- check_interval = '5 seconds',    -- how soon a new export is noticed
    -- smtp_action = 'bounce',          -- 'reject' | 'bounce' | 'drop' | 'shadow'
    -- http_action = 'reject',
    -- reject_code = 550,               -- 5xx
    -- reject_text = '5.7.1 recipient suppressed for {domain}: {reason} since {since}',
    --                                  -- also {recipient}; since is YYYY-MM-DD (UTC)
    -- queue = 'suppressed.kumo_suppression', -- set it in [policy] rather than here: the
    --                                  -- exporter reads it there to ignore this queue's bounces
    -- domain_meta = 'x_suppression_domain',
    -- name = 'default',                -- memoize caches: user.kumo_suppression.<name>.*
    -- cache_capacity = 100000,         -- file versions remembered (>= number of files:
    --                                  -- beyond it, messages would stat their file again)
    -- large_snapshot_bytes = 16777216, -- a file this large gets a memoize cache of its
    --                                  -- own, so it is never held twice (docs/lua-module.md)
  }
  local queue_module = require 'policy-extras.queue'   -- AFTER suppression:new
  local queue_helper = queue_module:setup { '/opt/kumomta/etc/policy/queues.toml' }

  kumo.on('smtp_server_message_received', function(msg, conn_meta)
    queue_helper:apply(msg)
    sup:check_smtp(msg, conn_meta)
  end)
  kumo.on('http_message_generated', function(msg) queue_helper:apply(msg); sup:check_http(msg) end)
  -- with sending_domain = 'sender', refuse a suppressed RCPT TO before DATA:
  kumo.on('smtp_server_mail_from', function(sender, conn_meta) sup:mail_from(sender, conn_meta) end)
  kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta) sup:rcpt_to(rcpt, conn_meta) end)

  local entry = sup:lookup('user@example.net', 'example.com') -- {reason=, since=, expires=} or nil

What new() registers (and nothing else; the message handlers are the operator's):
  * a get_queue_config handler that answers ONLY for its own queue (default
    `suppressed.kumo_suppression`, a name that can never be a real domain) with a
    custom_lua protocol, and returns nothing for every other queue;
  * the `make.<queue>` constructor: its connection:send() rejects every message with
    reject_code and the reject text, so kumod logs a Bounce for exactly that recipient.
  The suppression queue needs nothing in the queue helper's config, but it needs a
  shaping entry, as KumoMTA's docs say of log-hook queues: the shaping helper's defaults
  (limits meant for real MX hosts) apply to it too. In your shaping TOML:
    ['suppressed.kumo_suppression']
    mx_rollup = false
    connection_limit = 100
    max_deliveries_per_connection = 100000
    max_connection_rate = "1000/s"

Actions: reject = kumo.reject(code, text) (in smtp_server_message_received this rejects
the WHOLE SMTP transaction: that is why SMTP defaults to bounce); bounce = accept and
move the message to the suppression queue; drop = meta queue 'null' (only a Reception is
logged); shadow = deliver, set meta x_suppressed = reason, log one line.
A message with several recipients: suppressed ones are removed (msg:set_recipient) and
listed in meta x_suppressed_recipients; the action applies only when all are suppressed.
Every checked message gets meta <domain_meta> = the sending-domain key used.

Layouts: one file per sending domain, or for a large domain an index plus shards
(a shard loaded when a recipient first hashes into it), plain or sha256-hashed keys;
see the "snapshots" section below.

Loading: the snapshot file's version (mtime, size, inode via kumo.fs) is memoized for
check_interval; the snapshot itself is memoized by (path, version), so no message pays
file IO and a new export is seen within check_interval. Each Lua state keeps a view of
every sending domain it checked (the memoized tables of its current version), so a warm
check makes no memoize call until that version check is due. The number of memoize
caches does not grow with the number of domains (see "caches" below). kumod without
kumo.fs: the version is the file's sha256 from manifest.json, memoized for check_interval.
With kumo.fs, snapshot files must be regular files (a symlink is refused). Memoized
tables are userdata in kumod: this module only indexes them.

Fail open: a missing dir or file means no suppression; an unreadable, corrupt or
wrong-version snapshot means no suppression for that domain and one kumo.log_error per
bad file version. Nothing but the deliberate kumo.reject ever escapes check_*; bad
options are reported by new(), at policy load time.

Reading order: the per-message path first (check_message), then RCPT TO, the message
accessors, the keys, the caches (every cache the module keeps), the snapshots (every
memoize cache and file format detail), the reject text, the options and new().
]]
local kumo = require 'kumo'

local mod = {}
mod.__index = mod

local type, pcall, tostring, tonumber, error, pairs = type, pcall, tostring, tonumber, error, pairs
local lower, sub, find, match, format, byte =
  string.lower, string.sub, string.find, string.match, string.format, string.byte
local os_time, os_date = os.time, os.date
local concat = table.concat
local mtype = math.type

local DEFAULT_QUEUE = 'suppressed.kumo_suppression'
local MAX_RECIPIENT_LENGTH = 512 -- bytes, same limit as exporter/keys.py
local MAX_DOMAIN_LENGTH = 253    -- bytes: no longer domain can name a snapshot file
-- per Lua state: bounded, so hostile sending domains cannot grow these tables forever
local MAX_DOMAINS_PER_STATE = 10000

-- defined further down; declared here so that the per-message path reads first
local recipient_key, domain_key, sending_domain, recipients_of, first_suppressed, describe
local log_error, log_info

---------------------------------------------------------------------------- the per-message path

-- One message, top to bottom, inside the pcall of mod:_check. Returns the reject text
-- when the caller must kumo.reject, nothing otherwise. A clean message allocates nothing
-- here; a suppressed one only what its action hands to kumod (the reject text is cached
-- unless the template names the recipient, see compile_template).
local function check_message(self, msg, action)
  local dkey = sending_domain(self, msg)
  if dkey == nil then
    return nil
  end
  msg:set_meta(self.domain_meta, dkey)
  local now = os_time()
  local snapshots = self.snapshots
  local snapshot = snapshots.open(dkey, now)
  if snapshot == nil then
    return nil -- no usable snapshot: nothing to check against
  end
  local email, entry, hits, kept = first_suppressed(snapshots, snapshot, recipients_of(msg), now)
  if entry == nil then
    return nil
  end
  if action == 'shadow' then
    msg:set_meta('x_suppressed', entry.reason)
    if hits then
      msg:set_meta('x_suppressed_recipients', hits)
    end
    log_info(format('kumo-suppression: shadow: would suppress %s for %s', describe(email, entry, hits), dkey))
    return nil
  end
  if kept then -- some recipients remain: drop the suppressed ones, deliver the rest
    msg:set_recipient(kept)
    msg:set_meta('x_suppressed_recipients', hits)
    return nil
  end
  if action == 'drop' then
    msg:set_meta('queue', 'null')
    return nil
  end
  local text = self.reject_text(dkey, entry, email)
  if action == 'reject' then
    return text
  end
  msg:set_meta('x_suppression_text', text) -- bounce: the queue's delivery rejects with it
  msg:set_meta('queue', self.queue)
  return nil
end

-- The first suppressed recipient of a message: email, entry (its snapshot entry:
-- reason, since, expires), and for a message with several recipients hits (one
-- {recipient, reason, since, expires} per suppressed one) and kept (the others; nil when
-- every one is suppressed). Nothing at all when none is. Allocates only for a
-- multi-recipient message with a suppressed recipient (kumod needs those lists).
function first_suppressed(snapshots, snapshot, list, now)
  local find, n = snapshots.find, #list
  if n == 1 then
    local email = list[1].email
    return email, find(snapshot, recipient_key(email), now)
  end
  local first, entry, hits, kept
  for i = 1, n do
    local email = list[i].email
    local e = find(snapshot, recipient_key(email), now)
    if e and hits == nil then -- the first hit: the recipients before it were all clean
      first, entry, hits, kept = email, e, {}, {}
      for j = 1, i - 1 do
        kept[j] = list[j].email
      end
    end
    if e then
      hits[#hits + 1] = { recipient = email, reason = e.reason, since = e.since, expires = e.expires }
    elseif kept then
      kept[#kept + 1] = email
    end
  end
  return first, entry, hits, kept and kept[1] and kept or nil
end

function mod:_check(msg, action)
  local ok, reject_text = pcall(check_message, self, msg, action)
  if not ok then
    -- never let a broken snapshot or odd message turn into a transient failure
    pcall(log_error, 'kumo-suppression: check failed, message passed unchecked: ' .. tostring(reject_text))
    return
  end
  if reject_text then
    kumo.reject(self.code, reject_text) -- deliberately outside the pcall
  end
end

function mod:check_smtp(msg, conn_meta)
  return self:_check(msg, self.smtp_action)
end

function mod:check_http(msg)
  return self:_check(msg, self.http_action)
end

function describe(email, entry, hits)
  if hits == nil then
    return email .. ' (' .. entry.reason .. ')'
  end
  local parts = {}
  for i = 1, #hits do
    parts[i] = hits[i].recipient .. ' (' .. hits[i].reason .. ')'
  end
  return concat(parts, ', ')
end

-- the active entry for (recipient, sending domain), or nil; never raises
local function find_entry(self, recipient, domain)
  local dkey = domain_key(domain)
  local now = os_time()
  local snapshot = dkey and self.snapshots.open(dkey, now)
  if not snapshot then
    return nil
  end
  return self.snapshots.find(snapshot, recipient_key(recipient), now)
end

-- lookup(recipient, domain) -> {reason=, since=, expires=} (a plain table) or nil
function mod:lookup(recipient, domain)
  local ok, entry = pcall(find_entry, self, recipient, domain)
  if not ok or entry == nil then
    return nil
  end
  return { reason = entry.reason, since = entry.since, expires = entry.expires }
end

---------------------------------------------------------------------------- RCPT TO

local SENDER_META = 'x_suppression_sender_domain'

function mod:_return_path_domain(address)
  local key = domain_key(address.domain)
  return key and self.aliases[key] or key
end

local function remember_sender_domain(self, sender, conn_meta)
  conn_meta:set_meta(SENDER_META, self:_return_path_domain(sender) or '')
end

function mod:mail_from(sender, conn_meta)
  pcall(remember_sender_domain, self, sender, conn_meta)
end

-- the reject text for a suppressed RCPT TO, or nil
local function rcpt_verdict(self, rcpt, conn_meta)
  local dkey = conn_meta:get_meta(SENDER_META)
  if type(dkey) ~= 'string' or dkey == '' then
    return nil
  end
  local email = rcpt.email
  local entry = find_entry(self, email, dkey)
  if entry == nil then
    return nil
  end
  if self.smtp_action == 'shadow' then
    log_info(format('kumo-suppression: shadow: would refuse RCPT TO %s for %s (%s)', email, dkey, entry.reason))
    return nil
  end
  return self.reject_text(dkey, entry, email)
end

function mod:rcpt_to(rcpt, conn_meta)
  if self.source ~= 'sender' then
    return
  end
  local ok, text = pcall(rcpt_verdict, self, rcpt, conn_meta)
  if ok and text then
    kumo.reject(self.code, text) -- deliberately outside the pcall
  end
end

---------------------------------------------------------------------------- messages

local function from_header_domain(msg)
  local from = msg:from_header()
  return from and from.domain
end

-- The sending-domain key of a message. The envelope sender's domain goes through
-- [keys.aliases] (return-path domain -> sending domain), exactly as the exporter keys
-- records whose domain comes from a return path.
function sending_domain(self, msg)
  local source = self.source
  if source == 'from_header' then
    local ok, d = pcall(from_header_domain, msg)
    if ok and type(d) == 'string' and d ~= '' then
      return domain_key(d)
    end
    return self:_return_path_domain(msg:sender())
  elseif source == 'sender' then
    return self:_return_path_domain(msg:sender())
  end
  return domain_key(msg:get_meta(self.source_meta))
end

-- msg:recipient_list() exists since kumod 2025.12.02; before it, msg:recipient() is the
-- one recipient (and in between it may be an array)
local function recipient_list(msg)
  return msg:recipient_list()
end
local has_recipient_list = true -- per Lua state; false once this kumod showed it lacks it

function recipients_of(msg)
  if has_recipient_list then
    local ok, list = pcall(recipient_list, msg)
    if ok and type(list) == 'table' then
      return list
    end
    has_recipient_list = false
  end
  local r = msg:recipient()
  if type(r) == 'table' then
    return r
  end
  return { r }
end

-- log helpers: kumo.log_* exist since 2025.03.19; older kumod gets print
function log_error(text)
  local f = kumo.log_error
  if f then
    f(text)
  else
    print('ERROR ' .. text)
  end
end

function log_info(text)
  local f = kumo.log_info
  if f then
    f(text)
  else
    print(text)
  end
end

---------------------------------------------------------------------------- keys

-- Recipient key: strip surrounding whitespace and one pair of
-- <>, ASCII-lowercase. nil for something that cannot be a recipient (same rules as
-- exporter/keys.py recipient_key).
function recipient_key(address)
  if type(address) ~= 'string' then
    return nil
  end
  local text = match(address, '^%s*(.-)%s*$')
  if byte(text, 1) == 60 and byte(text, -1) == 62 and #text >= 2 then -- '<' ... '>'
    text = sub(text, 2, -2)
  end
  if #text > MAX_RECIPIENT_LENGTH or not find(text, '@', 1, true) or byte(text, -1) == 64 then
    return nil
  end
  return lower(text)
end
mod.recipient_key = recipient_key

-- Sending-domain key: ASCII-lowercased, one trailing dot removed. nil when empty or
-- longer than any domain can be (same rules as exporter/keys.py domain_key).
function domain_key(domain)
  if type(domain) ~= 'string' or #domain > 2 * MAX_DOMAIN_LENGTH then
    return nil
  end
  local key = lower(match(domain, '^%s*(.-)%s*$'))
  if byte(key, -1) == 46 then -- '.'
    key = sub(key, 1, -2)
  end
  if key == '' or #key > MAX_DOMAIN_LENGTH then
    return nil
  end
  return key
end
mod.domain_key = domain_key

-- A plain hostname: labels of [a-z0-9-], 1-63 chars, no leading/trailing hyphen, total
-- <= 253. Only such a domain ever names a file (no '/', '..', NUL, leading dot).
local function is_plain_hostname(domain)
  if type(domain) ~= 'string' or domain == '' or #domain > 253 then
    return false
  end
  if find(domain, '[^a-z0-9%.%-]') then
    return false
  end
  local pos = 1
  while true do
    local dot = find(domain, '.', pos, true)
    local label = sub(domain, pos, (dot or 0) - 1)
    local n = #label
    if n < 1 or n > 63 or byte(label, 1) == 45 or byte(label, n) == 45 then
      return false
    end
    if not dot then
      return true
    end
    pos = dot + 1
  end
end
mod.is_plain_hostname = is_plain_hostname

function mod.snapshot_filename(domain, fmt)
  if is_plain_hostname(domain) then
    return domain .. '.' .. (fmt or 'json')
  end
  return nil
end

---------------------------------------------------------------------------- caches
-- Every cache the module keeps, in one place:
--  * per Lua state (module-level tables are per state in kumod, and a state lives at
--    most 300 s / 1024 uses there): bounded tables, made by bounded() and filled by
--    remember(), that start over when full, so hostile input cannot grow them. They
--    hold what is needed per message without allocating: each sending domain's view
--    of its snapshot (the file path, and the memoized tables of its version, checked
--    again when the process-wide version check expires), shard paths, digests of
--    '@domain' keys, reject texts and dates;
--  * process-wide, through kumo.memoize: made by memoize_caches() below, and nowhere else.
local function bounded(limit)
  return { t = {}, n = 0, limit = limit }
end

local function remember(cache, key, value)
  if cache.n >= cache.limit then
    cache.t, cache.n = {}, 0
  end
  cache.t[key] = value
  cache.n = cache.n + 1
  return value
end

-- remember() for a cache of nested tables: cache.t[k1][k2][k3] = value, one entry
local function remember_in(cache, k1, k2, k3, value)
  if cache.n >= cache.limit then
    cache.t, cache.n = {}, 0
  end
  local t1 = cache.t[k1] or {}
  cache.t[k1] = t1
  local t2 = t1[k2] or {}
  t1[k2] = t2
  t2[k3] = value
  cache.n = cache.n + 1
  return value
end

---------------------------------------------------------------------------- snapshots
-- Every memoize cache and every detail of the snapshot files lives in this section.
--
-- Layouts (all: "format": "kumo-suppression-snapshot", "version": 1):
--  * single: <domain>.json, recipients = every entry;
--  * sharded: <domain>.json is the index (recipients = the '@domain' entries only,
--    "shards": N, a power of two), and shard k is <domain>_shard-KKKK-of-NNNN.json
--    ("shard": k, "shards": N) with the plain entries whose key's sha256 starts with a
--    32-bit big-endian number = k (mod N). A shard is loaded when a recipient first
--    hashes into it, and reloaded only when its own file changes.
--  Either may carry "hash": "sha256" (every key is the sha256 hex of the recipient key)
--  and "domain_entries": n (n = 0: no '@domain' lookup, no second digest).
--
-- Memoize caches: kumod lists every memoize cache in its metrics with ~15 series that
-- are never removed, so the number of caches must not follow the number of domains or
-- shards. A cache keyed by (path, version) keeps an old version until its ttl (lruttl
-- prunes expired entries every 30 s; its eviction is a sampled LRU that need not pick
-- the old version), so:
--  * files under large_snapshot_bytes (16 MiB; by the manifest: count >= bytes / 100)
--    share ONE cache whose ttl bounds how long an old version stays (an unchanged file
--    is re-read once per SHARED_SNAPSHOT_TTL). The exporter's shards are such files;
--  * a larger file has a cache of its own with capacity 1: a new version replaces the
--    old one when it is loaded, so a large list is never held twice for longer than it
--    takes to notice the new export (check_interval), and is never re-read unchanged.
-- A state's view holds the memoized tables it last used until its version check is due
-- (at most check_interval); it then asks the caches again, so it never keeps a version
-- the caches have dropped for longer than that.
local SNAPSHOT_FORMAT = 'kumo-suppression-snapshot'
local SNAPSHOT_VERSION = 1
local HASH = 'sha256'
local SHARED_SNAPSHOT_TTL = 300 -- seconds
local LARGE_SNAPSHOT_TTL = '1 day' -- frees the memory of a large file that went away
local BYTES_PER_ENTRY = 100 -- roughly, in JSON: turns the manifest's count into a size
local LOG_ONCE_TTL = '1 day'
local MAX_SHARDS = 9999 -- four digits in the file name
-- views of domains and shards one state keeps (a shard view is a few fields)
local MAX_VIEWS_PER_STATE = 65536
-- a version string: 'f:...' a regular file, 'L:...' a large one, 'x:...' not a file
local REGULAR, LARGE = 'f:', 'L:'

-- mlua hands a u64 above 2^63 (inode numbers on some file systems) to Lua as a float,
-- which format('%d') refuses: such a number must still give a version string
local function integer_text(n)
  if mtype(n) == 'integer' then
    return format('%d', n)
  end
  return format('%.0f', n)
end

-- what a snapshot path names: the sending domain, and for a shard its k and N
local function parse_snapshot_path(path)
  local stem = match(path, '([^/]*)%.%a+$')
  local domain, k, n = match(stem, '^(.*)_shard%-(%d%d%d%d)%-of%-(%d%d%d%d)$')
  if domain then
    return domain, tonumber(k), tonumber(n)
  end
  return stem, nil, nil
end

-- the shard a key's sha256 hex falls into: its first 32 bits, big-endian, modulo N
local function shard_of_digest(digest, n)
  return tonumber(sub(digest, 1, 8), 16) % n
end
mod.shard_of_digest = shard_of_digest

local function shard_path(index_path, k, n)
  local base, ext = match(index_path, '^(.*)%.(%a+)$')
  return format('%s_shard-%04d-of-%04d.%s', base, k, n, ext)
end

-- sha256 hex of a key: kumod's kumo.digest (a BinaryResult whose .hex is lowercase)
local function sha256_hex(text)
  return kumo.digest.sha256(text).hex
end

-- the '@domain' key of a recipient key (its last '@' on)
local function domain_part(rkey)
  return match(rkey, '@[^@]*$')
end

-- optional top-level fields: present means the exporter meant something by them, so a
-- wrong type is a broken file, not a field to ignore
local TOP_LEVEL_TYPES = {
  count = 'number', generated_at = 'string', domain = 'string', hash = 'string',
  shards = 'number', shard = 'number', domain_entries = 'number',
}

local function is_power_of_two(n)
  return mtype(n) == 'integer' and n >= 2 and n <= MAX_SHARDS and n & (n - 1) == 0
end

-- the key of the first entry of `recipients` that is not a {reason, since, expires?}
-- table (entries are MemoizedTable userdata in kumod, tables elsewhere), or nil. One
-- pass per file version, so lookups can trust every entry.
local function bad_entry(recipients)
  for key, e in pairs(recipients) do
    if type(key) ~= 'string' then
      return key
    end
    local te = type(e)
    if te ~= 'table' and te ~= 'userdata' then
      return key
    end
    local expires = e.expires
    if type(e.reason) ~= 'string' or type(e.since) ~= 'number' or (expires ~= nil and type(expires) ~= 'number') then
      return key
    end
  end
  return nil
end

-- why a decoded document is not a usable snapshot for `path`, or nil. A shard must say
-- what its name says, and be hashed the way its index is (shard_hash: 'sha256' or
-- 'plain'). Runs once per file version (in the populate function).
local function snapshot_problem(doc, path, shard_hash)
  local domain, k, n = parse_snapshot_path(path)
  if type(doc) ~= 'table' then
    return 'not a ' .. SNAPSHOT_FORMAT .. ' document'
  elseif doc.format ~= SNAPSHOT_FORMAT then
    return 'format is ' .. tostring(doc.format) .. ', expected ' .. SNAPSHOT_FORMAT
  elseif doc.version ~= SNAPSHOT_VERSION then
    return 'unsupported version ' .. tostring(doc.version)
  elseif doc.domain ~= nil and doc.domain ~= domain then
    return 'domain is ' .. tostring(doc.domain) .. ', expected ' .. tostring(domain)
  end
  for name, expected in pairs(TOP_LEVEL_TYPES) do
    local v = doc[name]
    if v ~= nil and type(v) ~= expected then
      return format('%s is a %s, expected a %s', name, type(v), expected)
    end
  end
  if doc.hash ~= nil and doc.hash ~= HASH then
    return 'hash is ' .. doc.hash .. ', expected ' .. HASH
  end
  if k then
    if doc.shard ~= k or doc.shards ~= n then
      return format('shard %s of %s, expected %d of %d', tostring(doc.shard), tostring(doc.shards), k, n)
    end
    if (doc.hash == HASH) ~= (shard_hash == HASH) then
      return 'hash is ' .. tostring(doc.hash) .. ' but the index says ' .. tostring(shard_hash)
    end
  elseif doc.shard ~= nil or (doc.shards ~= nil and not is_power_of_two(doc.shards)) then
    return 'shards is ' .. tostring(doc.shards) .. ', expected a power of two from 2 to ' .. MAX_SHARDS
  end
  if (doc.hash or doc.shards) and not (kumo.digest and kumo.digest.sha256) then
    return 'hashed or sharded, and this kumod has no kumo.digest'
  end
  local recipients = doc.recipients
  if type(recipients) ~= 'table' then
    return 'recipients is a ' .. type(recipients) .. ', expected a map'
  end
  local bad = bad_entry(recipients)
  if type(bad) == 'string' then
    return format('entry %q has a wrong field type (reason: string, since: number, expires: number)', bad)
  elseif bad ~= nil then
    return 'recipients is an array, expected a map of recipient -> entry'
  end
  return nil
end

-- The populate function of the snapshot caches: runs once per (path, version), which
-- makes "one kumo.log_error per bad file version" hold process-wide. Never raises
-- (kumod would keep the error for 60 s): a broken file is a cached false.
-- Returns a shard's recipients map itself, and for a domain's own file (single or
-- index) { recipients =, hashed =, shards =, domain_entries = }.
local function load_snapshot(path, version, shard_hash)
  local kind = sub(version, 1, 2)
  if kind ~= REGULAR and kind ~= LARGE then
    log_error(format('kumo-suppression: %s is not a regular file (%s); no suppression for it', path, version))
    return false
  end
  local serde = kumo.serde
  local loader
  if match(path, '%.(%a+)$') == 'toml' then
    loader = (serde and serde.toml_load) or kumo.toml_load
  else
    loader = (serde and serde.json_load) or kumo.json_load
  end
  local ok, doc = pcall(loader, path)
  local problem
  if ok then
    problem = snapshot_problem(doc, path, shard_hash)
  else
    problem = tostring(doc)
  end
  if problem then
    log_error(format('kumo-suppression: bad snapshot %s: %s; no suppression for %s', path, problem,
      tostring(parse_snapshot_path(path))))
    return false
  end
  if shard_hash then
    return doc.recipients
  end
  return {
    recipients = doc.recipients, hashed = doc.hash == HASH, shards = doc.shards,
    domain_entries = doc.domain_entries,
  }
end

-- The memoize caches of one instance (prefix = user.kumo_suppression.<name>):
--  version_of(path) -> version string or false, and the unix time it was checked (the
--    check is memoized for check_interval): from kumo.fs (mtime, size, inode; no
--    symlinks), or from manifest.json's sha256 per file;
--  load(path, version[, shard_hash]) -> load_snapshot's result, from the shared cache or
--    a large file's own;
--  log_once(text): kumo.log_error once per text (texts name the file version).
local function memoize_caches(o, prefix)
  local dir, large_bytes, interval = o.snapshot_dir, o.large_snapshot_bytes, o.check_interval
  local once
  local function log_once(text) -- its cache is made the first time something goes wrong
    if once == nil then
      once = kumo.memoize(function(t)
        log_error(t)
        return true
      end, { name = prefix .. '.log_once', ttl = LOG_ONCE_TTL, capacity = 1024 })
    end
    once(text)
  end

  local version_of
  local fs = kumo.fs
  if fs and fs.metadata_for_path then
    local stat = fs.symlink_metadata_for_path or fs.metadata_for_path
    local function describe_file(md)
      if md.is_symlink then
        return 'x:symlink'
      end
      if not md.is_file then
        return 'x:' .. (md.is_dir and 'directory' or 'special') .. ':' .. tostring(md.ino)
      end
      local size = md.len
      return (size >= large_bytes and LARGE or REGULAR) .. integer_text(md.mtime.unix_timestamp_millis)
        .. ':' .. integer_text(size) .. ':' .. integer_text(md.ino)
    end
    local check = kumo.memoize(function(path)
      local ok, md = pcall(stat, path)
      local version = false -- missing: no suppression, nothing to log
      if ok then
        local ok2, v = pcall(describe_file, md)
        version = ok2 and v
      end
      return { version = version, at = os_time() }
    end, { name = prefix .. '.version', ttl = interval, capacity = o.cache_capacity })
    version_of = function(path)
      local r = check(path)
      return r.version, r.at
    end
  else
    local serde = kumo.serde
    local json_load = (serde and serde.json_load) or kumo.json_load
    local function file_version(versions, info)
      local file, sha, count = info.file, info.sha256, info.count
      if type(file) == 'string' and type(sha) == 'string' then
        local large = type(count) == 'number' and count * BYTES_PER_ENTRY >= large_bytes
        versions[file] = (large and LARGE or REGULAR) .. sha
      end
    end
    local function read_manifest(mpath)
      local ok, doc = pcall(json_load, mpath)
      if not ok then
        local text = tostring(doc)
        -- a missing manifest is just "nothing exported yet"
        if not find(text, 'No such file', 1, true) and not find(text, 'os error 2', 1, true) then
          log_once('kumo-suppression: cannot read ' .. mpath .. ': ' .. text)
        end
        return nil
      end
      if type(doc) ~= 'table' or type(doc.domains) ~= 'table' then
        log_once('kumo-suppression: ' .. mpath .. ' is not a kumo-suppression manifest')
        return nil
      end
      -- domains: domain -> {file, sha256, count, shard_files = {{file, sha256, count}...}}
      local versions = {}
      for domain, info in pairs(doc.domains) do
        if type(domain) == 'string' and type(info) == 'table' then
          file_version(versions, info)
          local shard_files = info.shard_files
          if type(shard_files) == 'table' then
            for _, shard in pairs(shard_files) do
              if type(shard) == 'table' then
                file_version(versions, shard)
              end
            end
          end
        end
      end
      return versions
    end
    local manifest = kumo.memoize(function(manifest_dir)
      return { versions = read_manifest(manifest_dir .. '/manifest.json'), at = os_time() }
    end, { name = prefix .. '.manifest', ttl = interval, capacity = 16 })
    local base_start = #dir + 2
    version_of = function(path)
      local m = manifest(dir)
      local versions = m.versions
      return versions and versions[sub(path, base_start)] or false, m.at
    end
  end

  local load_shared = kumo.memoize(load_snapshot, {
    name = prefix .. '.snapshots', ttl = SHARED_SNAPSHOT_TTL, capacity = o.cache_capacity,
  })
  local large_loaders = bounded(MAX_DOMAINS_PER_STATE) -- path -> its own cache
  local function load(path, version, shard_hash)
    if sub(version, 1, 2) ~= LARGE then
      return load_shared(path, version, shard_hash)
    end
    local loader = large_loaders.t[path] or remember(large_loaders, path, kumo.memoize(load_snapshot, {
      name = prefix .. '.large_snapshot:' .. sub(path, #dir + 2), ttl = LARGE_SNAPSHOT_TTL, capacity = 1,
    }))
    return loader(path, version, shard_hash)
  end
  return version_of, load, log_once
end

-- e if it is an entry that has not expired at `now`, else nil
local function active(e, now)
  if e ~= nil then
    local expires = e.expires
    if expires == nil or expires > now then
      return e
    end
  end
  return nil
end

-- The snapshots of one instance, seen from one Lua state:
--  open(dkey, now) -> the view of that sending domain's snapshot, or nil when it has
--    none usable; warm, a table read and a clock comparison (no memoize call, no IO);
--  find(view, rkey, now) -> the active entry for recipient key rkey (its own entry,
--    else its domain's '@domain' entry) or nil.
-- A view: { path, checked_at, fresh_until, version, map (the recipients), hashed,
-- domain_entries, shards, shard_hash, shard_views = { [k] = shard view } }; a shard
-- view: { k, path, checked_at, fresh_until, map (false: missing or broken) }. A view
-- is fresh from the time its version was checked until check_interval later, exactly
-- as long as the memoized version check it came from.
local function new_snapshots(o, prefix)
  local dir, ext, interval = o.snapshot_dir, o.format, o.check_interval
  local version_of, load, log_once = memoize_caches(o, prefix)
  local views = bounded(MAX_VIEWS_PER_STATE) -- dkey -> its view, shard path -> its view
  local domain_digests = bounded(MAX_DOMAINS_PER_STATE) -- '@domain' -> its sha256 hex

  local function refresh(view)
    local version, checked_at = version_of(view.path)
    view.checked_at, view.fresh_until, view.version = checked_at, checked_at + interval, version
    local snap = version and load(view.path, version)
    if not snap then
      view.map = nil
      return
    end
    local hashed, shards = snap.hashed, snap.shards
    view.map, view.hashed, view.domain_entries = snap.recipients, hashed, snap.domain_entries
    local shard_hash = hashed and HASH or 'plain'
    if shards ~= view.shards or shard_hash ~= view.shard_hash then -- other shard files
      view.shards, view.shard_hash, view.shard_views = shards, shard_hash, shards and {} or nil
    end
  end

  local function refresh_shard(view, s)
    local version, checked_at = version_of(s.path)
    s.checked_at, s.fresh_until = checked_at, checked_at + interval
    if not version then
      log_once(format('kumo-suppression: %s (shard %d of index version %s) is missing; '
        .. 'no suppression for its recipients', s.path, s.k, view.version))
      s.map = false
      return
    end
    s.map = load(s.path, version, view.shard_hash) or false
  end

  -- the recipients map of the shard that `digest` falls into, or false
  local function shard_map(view, digest, now)
    local k = shard_of_digest(digest, view.shards)
    local s = view.shard_views[k]
    if s == nil then -- the first recipient of this state in that shard: its path, once
      local path = shard_path(view.path, k, view.shards)
      s = remember(views, path, { k = k, path = path, checked_at = 0, fresh_until = 0 })
      view.shard_views[k] = s
    end
    if now >= s.fresh_until or now < s.checked_at then
      refresh_shard(view, s)
    end
    return s.map
  end

  local function domain_digest(at)
    return domain_digests.t[at] or remember(domain_digests, at, sha256_hex(at))
  end

  local snapshots = {}
  function snapshots.npaths() -- how many sending domains this state has a view of
    local n = 0
    for key in pairs(views.t) do
      n = n + (find(key, '/', 1, true) and 0 or 1)
    end
    return n
  end
  function snapshots.open(dkey, now)
    local view = views.t[dkey]
    if view == nil then
      if not is_plain_hostname(dkey) then
        return nil -- never remembered: hostile names must not fill the table
      end
      view = remember(views, dkey, { path = dir .. '/' .. dkey .. '.' .. ext, checked_at = 0, fresh_until = 0 })
    end
    if now >= view.fresh_until or now < view.checked_at then
      refresh(view)
    end
    return view.map and view or nil
  end
  function snapshots.find(view, rkey, now)
    if rkey == nil then
      return nil
    end
    local hashed, shards, own = view.hashed, view.shards, view.map
    local digest = (hashed or shards) and sha256_hex(rkey) -- once: its shard and, hashed, its key
    if shards then
      own = shard_map(view, digest, now)
    end
    local e = nil
    if own then -- false: a missing or broken shard, whose '@domain' entries still count
      e = active(own[hashed and digest or rkey], now)
    end
    if e == nil and view.domain_entries ~= 0 then
      local at = domain_part(rkey)
      e = active(view.map[hashed and domain_digest(at) or at], now)
    end
    return e
  end
  return snapshots
end

---------------------------------------------------------------------------- reject text

-- "since" as YYYY-MM-DD (UTC), cached per day: os.date is the costly part of a text
local day_strings = bounded(4096)
local function day_string(since)
  if type(since) ~= 'number' then
    return 'unknown'
  end
  local day = since // 86400
  return day_strings.t[day] or remember(day_strings, day, os_date('!%Y-%m-%d', math.floor(since)))
end

local PLACEHOLDERS = { domain = true, reason = true, since = true, recipient = true }

-- compile_template(reject_text) -> text(dkey, entry, recipient): the template is split
-- once into literals and {placeholder} markers (unknown placeholders stay as written).
-- The compiler knows whether a text depends on the recipient: when it does not, texts
-- repeat (same domain, reason and day for every message to a suppressed address) and
-- are kept per state, so a repeat costs three table reads and allocates nothing.
local function compile_template(template)
  local parts, pos, per_recipient = {}, 1, false
  while true do
    local s, e, name = find(template, '{(%w+)}', pos)
    if not s then
      break
    end
    if s > pos then
      parts[#parts + 1] = sub(template, pos, s - 1)
    end
    parts[#parts + 1] = PLACEHOLDERS[name] and { name } or sub(template, s, e)
    per_recipient = per_recipient or name == 'recipient'
    pos = e + 1
  end
  if pos <= #template then
    parts[#parts + 1] = sub(template, pos)
  end

  local n, buf = #parts, {}
  local function build(dkey, entry, recipient)
    for i = 1, n do
      local part = parts[i]
      if type(part) == 'table' then
        local name = part[1]
        if name == 'domain' then
          part = tostring(dkey)
        elseif name == 'reason' then
          part = tostring(entry.reason)
        elseif name == 'since' then
          part = day_string(entry.since)
        else
          part = tostring(recipient or '')
        end
      end
      buf[i] = part
    end
    return concat(buf, '', 1, n)
  end
  if per_recipient then
    return build
  end

  local texts = bounded(MAX_DOMAINS_PER_STATE) -- dkey -> reason -> day -> text
  return function(dkey, entry, recipient)
    local reason, since = entry.reason, entry.since
    local day = type(since) == 'number' and since // 86400 or 'unknown'
    local by_reason = texts.t[dkey]
    local by_day = by_reason and by_reason[reason]
    return by_day and by_day[day] or remember_in(texts, dkey, reason, day, build(dkey, entry, recipient))
  end
end

---------------------------------------------------------------------------- options

local DEFAULTS = {
  format = 'json',
  sending_domain = 'from_header',
  check_interval = 5, -- seconds
  smtp_action = 'bounce',
  http_action = 'reject',
  reject_code = 550,
  reject_text = '5.7.1 recipient suppressed for {domain}: {reason} since {since}',
  domain_meta = 'x_suppression_domain',
  name = 'default',
  cache_capacity = 100000,
  large_snapshot_bytes = 16777216,
}

local ACTIONS = { reject = true, bounce = true, drop = true, shadow = true }

-- module-level registry (per Lua state: kumod loads the policy once per state)
local CONFIGURED_NAMES, CONFIGURED_QUEUES = {}, {}

local function opt_error(what, detail)
  error(format('kumo-suppression: %s: %s', what, detail), 3)
end

local function check_string(what, v)
  if type(v) ~= 'string' or v == '' then
    opt_error(what, 'expected a non-empty string, got ' .. type(v))
  end
  return v
end

-- the same units as the exporter's config parser; the result (seconds) is what
-- memoize gets, so no unit is ever read differently by kumod (humantime) and Python
local DURATION_UNITS = {
  [''] = 1, s = 1, sec = 1, secs = 1, second = 1, seconds = 1,
  m = 60, min = 60, mins = 60, minute = 60, minutes = 60,
  h = 3600, hr = 3600, hrs = 3600, hour = 3600, hours = 3600,
  d = 86400, day = 86400, days = 86400, w = 604800, week = 604800, weeks = 604800,
  ms = 0.001, msec = 0.001, millis = 0.001,
}

-- kumod turns a ttl into a Rust Duration and adds it to Instant::now(): an absurd value
-- (inf, NaN, centuries) panics there, so durations are bounded here, at new()
local MAX_CHECK_INTERVAL = 86400 -- a day: a new export must be noticed the same day

local function check_duration(what, v, max_seconds)
  local seconds
  if type(v) == 'number' then
    seconds = v
  elseif type(v) == 'string' then
    local num, unit = match(v, '^%s*(%d+%.?%d*)%s*(%a*)%s*$')
    local scale = num and DURATION_UNITS[lower(unit)]
    seconds = scale and tonumber(num) * scale
  end
  if not seconds then
    opt_error(what, "expected a duration such as '5 seconds', got " .. tostring(v))
  end
  if not (seconds > 0) then -- also NaN
    opt_error(what, 'must be positive, got ' .. tostring(v))
  end
  if not (seconds <= max_seconds) then
    opt_error(what, format('must be at most %d seconds, got %s', max_seconds, tostring(v)))
  end
  return seconds
end

-- queues kumod itself owns: 'null' discards, '<name>.log_hook' carries log hooks,
-- '*.kumomta.internal' are the HTTP generator and the deferred SMTP injection queues
local function is_kumod_internal_queue(name)
  local key = lower(name)
  return key == 'null' or match(key, '%.log_hook$') ~= nil or match(key, '%.kumomta%.internal$') ~= nil
end

local VALIDATORS = {
  config = check_string,
  snapshot_dir = check_string,
  format = function(what, v)
    if v ~= 'json' and v ~= 'toml' then
      opt_error(what, "expected 'json' or 'toml', got " .. tostring(v))
    end
    return v
  end,
  sending_domain = function(what, v)
    if v == 'from_header' or v == 'sender' then
      return v
    end
    if type(v) == 'string' and match(v, '^meta:[%w_%-%.]+$') then
      return v
    end
    opt_error(what, "expected 'from_header', 'sender' or 'meta:NAME', got " .. tostring(v))
  end,
  check_interval = function(what, v)
    return check_duration(what, v, MAX_CHECK_INTERVAL)
  end,
  smtp_action = function(what, v)
    if not ACTIONS[v] then
      opt_error(what, "expected 'reject', 'bounce', 'drop' or 'shadow', got " .. tostring(v))
    end
    return v
  end,
  reject_code = function(what, v)
    if mtype(v) ~= 'integer' or v < 500 or v > 599 then
      opt_error(what, 'expected an integer 5xx SMTP code, got ' .. tostring(v))
    end
    return v
  end,
  reject_text = check_string,
  queue = function(what, v)
    check_string(what, v)
    if not match(v, '^[%w_%-%.]+$') then
      opt_error(what, 'expected a queue domain of letters, digits, _ - and ., got ' .. v)
    end
    if is_kumod_internal_queue(v) then
      opt_error(what, v .. ' is a queue kumod uses itself; pick a name of your own')
    end
    return v
  end,
  domain_meta = check_string,
  name = function(what, v)
    if type(v) ~= 'string' or not match(v, '^[%w_%-]+$') then
      opt_error(what, 'expected a name of letters, digits, _ and -, got ' .. tostring(v))
    end
    return v
  end,
  aliases = function(what, v)
    if type(v) ~= 'table' then
      opt_error(what, 'expected a table of return-path domain = sending domain')
    end
    local out = {}
    for from, to in pairs(v) do
      local fk, tk = domain_key(from), domain_key(to)
      if not fk or not tk then
        opt_error(what, 'expected domain names, got ' .. tostring(from) .. ' = ' .. tostring(to))
      end
      out[fk] = tk
    end
    return out
  end,
  cache_capacity = function(what, v)
    if mtype(v) ~= 'integer' or v < 1 then
      opt_error(what, 'expected a positive integer, got ' .. tostring(v))
    end
    return v
  end,
}
VALIDATORS.http_action = VALIDATORS.smtp_action
VALIDATORS.large_snapshot_bytes = VALIDATORS.cache_capacity

-- config file sections/keys this module reads; every other key belongs to Python
local CONFIG_KEYS = {
  policy = {
    smtp_action = 'smtp_action',
    http_action = 'http_action',
    reject_code = 'reject_code',
    reject_text = 'reject_text',
    check_interval = 'check_interval',
    queue = 'queue',
    domain_meta = 'domain_meta',
  },
  keys = { sending_domain = 'sending_domain', aliases = 'aliases' },
  export = { dir = 'snapshot_dir', format = 'format' },
}

local function dirname(path)
  local dir = match(path, '^(.*)/[^/]*$')
  if dir == nil then
    return '.'
  end
  if dir == '' then
    return '/'
  end
  return dir
end

local function load_toml(path)
  local serde = kumo.serde
  local loader = (serde and serde.toml_load) or kumo.toml_load
  if not loader then
    error('kumo-suppression: this kumod has neither kumo.serde.toml_load nor kumo.toml_load', 3)
  end
  local ok, data = pcall(loader, path)
  if not ok then
    error(format('kumo-suppression: cannot read config %s: %s', path, tostring(data)), 3)
  end
  return data
end

local function read_config(path)
  local data = load_toml(path)
  local out = {}
  if type(data) ~= 'table' then
    return out
  end
  for section, keys in pairs(CONFIG_KEYS) do
    local sect = data[section]
    if sect ~= nil then
      if type(sect) ~= 'table' then
        opt_error(path .. ': [' .. section .. ']', 'expected a table')
      end
      for key, option in pairs(keys) do
        local v = sect[key]
        if v ~= nil then
          out[option] = VALIDATORS[option](path .. ': ' .. section .. '.' .. key, v)
        end
      end
    end
  end
  -- relative paths in the config are relative to the directory of the config path as
  -- given, symlinks not followed (Lua cannot realpath; the exporter does the same)
  local dir = out.snapshot_dir
  if dir and byte(dir, 1) ~= 47 then
    out.snapshot_dir = dirname(path) .. '/' .. dir
  end
  return out
end

---------------------------------------------------------------------------- new

function mod:new(options)
  if type(options) ~= 'table' then
    error('kumo-suppression: new{...} expects a table of options', 2)
  end
  local given = {}
  for k, v in pairs(options) do
    local check = VALIDATORS[k]
    if check == nil then
      error('kumo-suppression: unknown option ' .. tostring(k), 2)
    end
    given[k] = check('option ' .. k, v)
  end
  local o = {}
  if given.config then
    o = read_config(given.config)
  end
  for k, v in pairs(given) do
    if k ~= 'config' then
      o[k] = v
    end
  end
  for k, v in pairs(DEFAULTS) do
    if o[k] == nil then
      o[k] = v
    end
  end
  if o.snapshot_dir == nil then
    error('kumo-suppression: no snapshot directory: pass config = PATH (with [export].dir) or snapshot_dir', 2)
  end
  o.snapshot_dir = match(o.snapshot_dir, '^(.-)/*$')
  if o.snapshot_dir == '' then
    o.snapshot_dir = '/'
  end
  if o.queue == nil then
    o.queue = DEFAULT_QUEUE
  end
  if CONFIGURED_NAMES[o.name] then
    error(format("kumo-suppression: an instance named '%s' is already configured; pass name = '...'", o.name), 2)
  end
  if CONFIGURED_QUEUES[o.queue] then
    error(format("kumo-suppression: queue '%s' is already used by another instance; pass queue = '...'", o.queue), 2)
  end

  local self = setmetatable({}, mod)
  self.options = o
  self.code = o.reject_code
  self.reject_text = compile_template(o.reject_text)
  self.queue = o.queue
  self.domain_meta = o.domain_meta
  self.smtp_action = o.smtp_action
  self.http_action = o.http_action
  self.source = o.sending_domain
  self.source_meta = match(o.sending_domain, '^meta:(.+)$')
  self.aliases = o.aliases or {}
  self.snapshots = new_snapshots(o, 'user.kumo_suppression.' .. o.name)
  self:_register_queue()
  CONFIGURED_NAMES[o.name] = true
  CONFIGURED_QUEUES[o.queue] = true
  return self
end

-- a message queued without its text (by hand, or by an older version of this module)
local NO_TEXT_ENTRY = { reason = 'suppressed' }

-- the suppression queue: a get_queue_config handler for it alone, and its constructor
function mod:_register_queue()
  local queue = self.queue
  local constructor = 'make.' .. queue
  local sup = self
  kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
    if domain ~= queue then
      return -- NOTHING (not nil): the next handler decides
    end
    return kumo.make_queue_config {
      protocol = { custom_lua = { constructor = constructor } },
    }
  end)
  kumo.on(constructor, function(domain, tenant, campaign)
    local connection = {}
    function connection:send(msg)
      local ok, text = pcall(msg.get_meta, msg, 'x_suppression_text')
      if not ok or type(text) ~= 'string' then
        local dok, dkey = pcall(msg.get_meta, msg, sup.domain_meta)
        text = sup.reject_text(dok and dkey or '?', NO_TEXT_ENTRY, nil)
      end
      kumo.reject(sup.code, text)
    end
    return connection
  end)
end

return mod
