"""kumo-suppression's own stand-in for kumod's policy Lua environment (Lua 5.4 via lupa).

It reproduces the kumod behaviours that decide whether policy_lua/suppression.lua is
correct (each read from the KumoMTA sources: crates/mod-memoize, crates/lruttl,
crates/message, crates/mod-filesystem, crates/kumod):

* `kumo` is a module (`require 'kumo'`), never a global; there is no `debug` library.
* `kumo.on`: a second handler for a single-handler event is an error, registering from
  inside an event handler is an error; `get_queue_config` handlers are chained and the
  chain stops at the first handler that returns ANY value (`return nil` included, which
  then fails to convert to a QueueConfig: the queue breaks).
* `kumo.memoize(fn, {name, ttl, capacity})`: process-wide caches by name, keyed by the
  call's arguments, TTL on the fake clock, LRU capacity. A returned table comes back as a
  `MemoizedTable` USERDATA (index / # / pairs work; rawget, next, table.* and
  type() == 'table' do not). Userdata results cannot be memoized. A failed populate is
  cached for 60 s whatever the ttl, expired entries are pruned every 30 s (lruttl).
  `metric_series()`: the Prometheus series kumod would list for those caches.
* `kumo.fs.metadata_for_path` / `symlink_metadata_for_path`: userdata with len/size/ino/
  mtime (a Time userdata with unix_timestamp / unix_timestamp_millis)/is_file/...;
  unknown fields and missing paths raise. `with_fs=False` removes `kumo.fs`.
* `kumo.reject` raises an error OBJECT; errors from kumo functions are userdata
  (`tostring(err)` works, `'x' .. err` does not).
* Message / EnvelopeAddress / HeaderAddress / ConnectionMetaData userdata.
* Flows: an SMTP transaction (any reject rejects the whole transaction), MAIL FROM /
  RCPT TO (a reject there refuses that recipient only), HTTP injection (a reject fails
  that recipient), and delivery through a queue (get_queue_config chain -> custom_lua
  constructor -> connection:send; 4xx reject = TransientFailure, other = Bounce).
* os.time(), os.date() and kumo.time.now() follow a FakeClock the test controls.

Design: every kumod object is built IN LUA (prelude below). kumod's userdata and digests
are native Rust, so the stand-in makes them in C where it can (tests/standin_native.c,
built once with gcc and loaded with package.loadlib; `Kumod.native` says whether it is in
use): a userdata is a fresh empty C userdata given the Lua-side metatable, and
kumo.digest.sha256 hashes the string's bytes in C. Without a C compiler (or with
native=False / KUMO_STANDIN_NATIVE=0) the Python fallback behaves the same: userdata come
from fresh, tiny Python objects whose metatable is replaced by a Lua-side one right away
(while `debug` is still reachable to the prelude only). lupa then never runs its own __gc
for them, so it keeps its reference: the Python object stays alive and no address is
reused (a lupa pitfall: its own __gc would let the address be reused); digests are
hashlib's. A memoize hit is pure Lua: no Python call, no allocation, so benchmarks
measure the module, not the stand-in.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import shutil
import stat as _stat
import subprocess
import tempfile
import time as _time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import orjson
from lupa import lua54

__all__ = ["Kumod", "FakeClock", "LuaError", "Message", "TxnResult", "HttpResult",
           "RcptResult", "DeliveryOutcome", "MULTI_HANDLER_EVENTS", "native_library", "NATIVE_ENV"]

# kumod events declared with several handlers; every other event has exactly one.
MULTI_HANDLER_EVENTS = ("get_queue_config", "throttle_insert_ready_queue",
                        "should_enqueue_log_record", "pre_init", "validate_config",
                        "requeue_message", "get_acl_definition")


_I64_MAX = 2**63 - 1
_SCALARS = {str, int, float, bool, type(None)}
SERIES_PER_MEMOIZE_CACHE = 15


class LuaError(Exception):
    """An error that escaped a chunk run with Kumod.execute()."""


# ----------------------------------------------------------------------------- native part
# kumod's userdata and kumo.digest are native Rust; made of Python objects through lupa
# they cost the stand-in ~1.5 us (a userdata) and ~1.9 us (a sha256 digest), more than
# the module's own warm check. tests/standin_native.c makes both in C: built here once
# per source and lupa build, loaded into each Lua state with package.loadlib.
_NATIVE_SOURCE = Path(__file__).with_name("standin_native.c")
NATIVE_ENV = "KUMO_STANDIN_NATIVE"   # "0": every Kumod uses the Python fallback


def _native_cache_dir() -> Path:
    """A directory of this user's only (the build is loaded into the process)."""
    base = Path(tempfile.gettempdir()) / f"kumo-standin-native-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(base)
        if _stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022:
            return base
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="kumo-standin-native-"))


@functools.cache
def native_library() -> tuple[str | None, str]:
    """(path, "") of tests/standin_native.c built against lupa's lua54 module, or (None,
    why not): no C compiler, a failed build, or KUMO_STANDIN_NATIVE=0. Built once per
    process (at most: once per source and lupa build, cached per user)."""
    if os.environ.get(NATIVE_ENV, "1") == "0":
        return None, f"{NATIVE_ENV}=0"
    return build_native(_native_cache_dir())


def build_native(cache: Path) -> tuple[str | None, str]:
    """tests/standin_native.c built into `cache` unless there already, named by a hash of
    the source, lupa's module (path, size, mtime) and the compiler. Concurrent builders
    (xdist workers) each write a temp file and os.replace it: a reader sees a whole
    library or none."""
    cc = shutil.which(os.environ.get("CC") or "gcc")
    if cc is None:
        return None, "no C compiler (gcc) on PATH"
    lua_so = lua54.__file__
    try:
        source, st = _NATIVE_SOURCE.read_bytes(), os.stat(lua_so)
        key = hashlib.sha256(b"\0".join([source, os.fsencode(lua_so), os.fsencode(cc),
                                         b"%d %d" % (st.st_size, st.st_mtime_ns)])).hexdigest()[:24]
        lib = cache / f"standin_native-{key}.so"
        if lib.is_file():
            return str(lib), ""
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{lib.stem}.", suffix=".so")
        os.close(fd)
        try:
            # linked against lupa's module by its path: the library's lua_* calls resolve
            # to the Lua already loaded in this process (lupa's symbols are not global)
            r = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(_NATIVE_SOURCE), lua_so],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                return None, f"{cc} failed ({r.returncode}): {r.stderr.strip()[-400:]}"
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"building {_NATIVE_SOURCE.name}: {err}"
    return str(lib), ""


def _open_native(lua, path: str):
    """The native module's table in this Lua state, or (None, why not)."""
    opened = lua.globals().package.loadlib(path, "luaopen_standin_native")
    if lua54.lua_type(opened) != "function":
        why = opened[1] if isinstance(opened, tuple) else opened
        return None, f"package.loadlib({path}): {why}"
    try:
        return opened(), ""
    except lua54.LuaError as err:
        return None, f"luaopen_standin_native: {err}"


class _Seed:
    """One fresh Python object per Lua userdata (see module docstring)."""
    __slots__ = ()


class FakeClock:
    """Unix time the test controls. os.time(), memoize TTLs etc. follow it."""

    def __init__(self, start: float | None = None):
        self._now = float(start if start is not None else int(_time.time()))
        self._listeners: list = []

    def now(self) -> float:
        return self._now

    def set(self, when: float) -> None:
        self._now = float(when)
        for cb in self._listeners:
            cb(self._now)

    def advance(self, seconds: float) -> float:
        self.set(self._now + seconds)
        return self._now


# ----------------------------------------------------------------------------- results

@dataclass
class TxnResult:
    """One SMTP transaction (DATA): kumod rejects it as a whole if any message is rejected."""
    status: str                    # 'accepted' | 'rejected' | 'tempfail'
    code: int | None = None
    text: str | None = None
    error: str | None = None       # a non-reject Lua error (kumod: 451 temporary failure)
    messages: list = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"


@dataclass
class HttpResult:
    """One HTTP injection of one message: a reject fails that recipient only."""
    status: str                    # 'ok' | 'rejected' | 'failed'
    code: int | None = None
    text: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"


@dataclass
class RcptResult:
    recipient: str
    status: str                    # 'accepted' | 'rejected' | 'tempfail'
    code: int | None = None
    text: str | None = None
    error: str | None = None


@dataclass
class DeliveryOutcome:
    kind: str                      # Delivery | Bounce | TransientFailure | Discarded | QueueError | Smtp
    queue: str
    code: int | None = None
    text: str | None = None
    protocol: str | None = None    # 'Lua' for custom_lua
    error: str | None = None


# ----------------------------------------------------------------------------- the Lua side

_PRELUDE = r"""
local PY, OPT = ...
-- the prelude is the only code that ever sees `debug`
local setmt, getmt = debug.setmetatable, debug.getmetatable
local traceback = debug.traceback
local type, pairs, ipairs, next, select, tostring, error, pcall, xpcall =
      type, pairs, ipairs, next, select, tostring, error, pcall, xpcall
local rawget, rawset, setmetatable, mtype, floor = rawget, rawset, setmetatable, math.type, math.floor
local tpack, tunpack, concat = table.pack, table.unpack, table.concat

local S = {}                      -- the stand-in's internal API (for Python)
-- kumod keeps memoized data outside the Lua heap (a Rust map), so a big snapshot costs
-- the Lua collector nothing there. Generational mode gets close: the frozen snapshot
-- becomes "old" and minor collections stop traversing it.
collectgarbage('generational')

-- ---------------------------------------------------------------- userdata factory
-- native (tests/standin_native.c): a fresh empty C userdata with metatable mt, as kumod's
-- are native; fallback: a fresh Python object from a pool, its metatable replaced
local new_ud
if OPT.native then
  new_ud = OPT.native.userdata
else
  local pool, pool_i = {}, 1
  new_ud = function(mt)
    local u = pool[pool_i]
    if u == nil then pool = PY.seeds(512); pool_i = 1; u = pool[1] end
    pool[pool_i] = nil; pool_i = pool_i + 1
    setmt(u, mt)
    return u
  end
end
S.new_ud = new_ud
local function mt_of(v) if type(v) == 'userdata' then return getmt(v) end return nil end

-- ---------------------------------------------------------------- clock
local NOW = OPT.now
function S.set_clock(t) NOW = t end
local function now() return NOW end
local real_time, real_date = os.time, os.date
os.time = function(t) if t == nil then return floor(NOW) end return real_time(t) end
os.date = function(fmt, t) return real_date(fmt or '%c', t == nil and floor(NOW) or t) end

-- ---------------------------------------------------------------- errors
local ERR = setmetatable({}, {__mode = 'k'})
local ErrMT = {__name = 'error', __tostring = function(u) return ERR[u] or 'error' end}
local function raise(text)
  local e = new_ud(ErrMT); ERR[e] = tostring(text); error(e, 0)
end
S.raise = raise
local REJ = setmetatable({}, {__mode = 'k'})
local RejectMT = {__name = 'error', __tostring = function(u)
  local r = REJ[u]; return tostring(r.code) .. ' ' .. r.text end}

local kumo = {}
package.loaded.kumo = kumo

-- ---------------------------------------------------------------- durations
local UNITS = {ms = 0.001, msec = 0.001, millisecond = 0.001, milliseconds = 0.001,
  s = 1, sec = 1, secs = 1, second = 1, seconds = 1,
  m = 60, min = 60, mins = 60, minute = 60, minutes = 60,
  h = 3600, hr = 3600, hrs = 3600, hour = 3600, hours = 3600,
  d = 86400, day = 86400, days = 86400}
local function parse_duration(v)
  if type(v) == 'number' then return v end
  if type(v) ~= 'string' then raise('invalid duration: expected a string') end
  local total, rest, seen = 0, v, false
  while true do
    local n, unit, tail = rest:match('^%s*(%d+%.?%d*)%s*(%a+)(.*)$')
    if n == nil then break end
    local mul = UNITS[unit]
    if mul == nil then raise('invalid duration ' .. v .. ': unknown unit ' .. unit) end
    total = total + tonumber(n) * mul; rest = tail; seen = true
  end
  if not seen or rest:match('%S') then raise('invalid duration: ' .. v) end
  return total
end
S.parse_duration = parse_duration

-- ---------------------------------------------------------------- events
local HANDLERS, MULTI, CURRENT = {}, {}, nil
for _, name in ipairs(OPT.multi) do MULTI[name] = true end
function kumo.on(name, fn)
  if type(name) ~= 'string' then raise('error converting Lua ' .. type(name) .. ' to String') end
  if type(fn) ~= 'function' then raise('error converting Lua ' .. type(fn) .. ' to function') end
  if CURRENT ~= nil then
    raise(("Attempting to register an event handler via `kumo.on('%s', ...)` from within "
      .. "the event handler '%s'"):format(name, CURRENT))
  end
  if MULTI[name] then
    local list = HANDLERS[name] or {}
    list[#list + 1] = fn
    HANDLERS[name] = list
    return
  end
  if HANDLERS[name] ~= nil then raise(name .. ' event already has a handler defined') end
  HANDLERS[name] = fn
end

-- call fn and classify the outcome: 'ok', n, values... | 'reject', code, text | 'error', text
local function errh(e)
  if mt_of(e) == RejectMT then return e end
  local ok, text = pcall(tostring, e)
  return {text = ok and text or ('<' .. type(e) .. ' error>'), tb = traceback('', 2)}
end
local function classify(ok, ...)
  if ok then return 'ok', select('#', ...), ... end
  local e = ...
  if mt_of(e) == RejectMT then return 'reject', REJ[e].code, REJ[e].text end
  return 'error', e.text .. e.tb
end
local function call(fn, ...) return classify(xpcall(fn, errh, ...)) end
local function fire(name, ...)
  local h = HANDLERS[name]
  if h == nil then return 'none' end
  local prev = CURRENT
  CURRENT = name
  local r
  if MULTI[name] then
    r = {n = 1, 'none'}
    for i = 1, #h do
      local x = tpack(call(h[i], ...))
      if x[1] ~= 'ok' or x[2] > 0 then r = x; break end   -- ANY value ends the chain
    end
  else
    r = tpack(call(h, ...))
  end
  CURRENT = prev
  return tunpack(r, 1, r.n)
end
S.fire = fire
function S.handler_count(name)
  local h = HANDLERS[name]
  if h == nil then return 0 end
  return MULTI[name] and #h or 1
end
function S.run_chunk(code, chunkname)
  local fn, err = load(code, chunkname, 't')
  if not fn then return 'error', err end
  return call(fn)
end

-- ---------------------------------------------------------------- memoize
-- The proxy of a memoized table: the frozen Lua table lives in STORE[proxy]; one proxy
-- per frozen table (kumod makes a fresh userdata per call; indistinguishable for a module).
local STORE = setmetatable({}, {__mode = 'k'})
local PROXY = setmetatable({}, {__mode = 'k'})
local MemoMT = {__name = 'MemoizedTable'}
local function proxy_of(t)
  local u = PROXY[t]
  if u == nil then u = new_ud(MemoMT); STORE[u] = t; PROXY[t] = u end
  return u
end
S.MemoMT = MemoMT
MemoMT.__index = function(u, k)
  local v = STORE[u][k]
  if type(v) == 'table' then return proxy_of(v) end
  return v
end
MemoMT.__len = function(u) local n = 0; for _ in next, STORE[u] do n = n + 1 end; return n end
MemoMT.__pairs = function(u)
  local t, k = STORE[u], nil
  return function()
    local v; k, v = next(t, k)
    if type(v) == 'table' then v = proxy_of(v) end
    return k, v
  end, u, nil
end
MemoMT.__newindex = function() raise('MemoizedTable is read-only') end
MemoMT.__tostring = function() return 'MemoizedTable' end

-- table.* functions do not accept a MemoizedTable in kumod (it is userdata there)
for _, fname in ipairs({'concat', 'insert', 'remove', 'sort', 'unpack', 'move'}) do
  local orig = table[fname]
  table[fname] = function(t, ...)
    if mt_of(t) == MemoMT then
      error("bad argument #1 to '" .. fname .. "' (table expected, got MemoizedTable)", 2)
    end
    return orig(t, ...)
  end
end

-- kumod converts a returned table into a shared map once: scalars and tables only.
local FREEZABLE = {string = true, number = true, boolean = true}
local function check_freezable(v, depth)
  local t = type(v)
  if t == 'table' then
    if depth > 64 then raise('memoize: table nested too deeply') end
    for k, x in next, v do
      if type(k) ~= 'string' and mtype(k) ~= 'integer' then raise('memoize: unsupported key type ' .. type(k)) end
      local tx = type(x)
      if tx == 'table' then
        if depth >= 64 then raise('memoize: table nested too deeply') end
        -- a map of records (a snapshot): its entries' fields are checked here, not by a
        -- call per entry (the walk stands for kumod's conversion, done in Rust there)
        for k2, y in next, x do
          if type(k2) ~= 'string' and mtype(k2) ~= 'integer' then raise('memoize: unsupported key type ' .. type(k2)) end
          local ty = type(y)
          if ty == 'table' then check_freezable(y, depth + 2)
          elseif not FREEZABLE[ty] then raise('memoize: cannot memoize a ' .. ty .. ' value') end
        end
      elseif not FREEZABLE[tx] then
        raise('memoize: cannot memoize a ' .. tx .. ' value')
      end
    end
  elseif t == 'userdata' or t == 'function' or t == 'thread' then
    raise('memoize: cannot memoize a ' .. t .. ' value (a userdata such as a '
      .. 'MemoizedTable, metadata or Time has no __memoize)')
  end
end

local CACHES = {}
S.CACHES = CACHES
local FAILED_POPULATE_TTL = 60       -- lruttl: a failed populate stays cached 60 s
local PRUNE_INTERVAL = 30            -- lruttl's prune_expired_caches task runs every 30 s
local next_prune = OPT.now + PRUNE_INTERVAL
local function prune_expired()
  if NOW < next_prune then return end
  next_prune = NOW + PRUNE_INTERVAL
  for _, cache in pairs(CACHES) do
    for e in next, cache.entries do
      if NOW >= e.expires then
        e.node[e.key] = nil; cache.entries[e] = nil; cache.count = cache.count - 1
      end
    end
  end
end
local NIL = {}                     -- argument key for nil
local MEMO_FIELDS = {name = true, ttl = true, capacity = true, invalidate_with_epoch = true,
  populate_timeout = true, retry_on_populate_timeout = true, allow_stale_reads = true}
local function param_sig(p)
  return tostring(p.ttl) .. '|' .. tostring(p.capacity)
end
local function arg_key(v)
  local t = type(v)
  if t == 'nil' then return NIL end
  if t == 'string' or t == 'number' or t == 'boolean' then return v end
  return 'json:' .. PY.json_key(v)  -- rare: table arguments
end

function kumo.memoize(fn, params)
  if type(fn) ~= 'function' then raise('error converting Lua ' .. type(fn) .. ' to function') end
  if type(params) ~= 'table' then raise('memoize: params table required') end
  for k in pairs(params) do
    if not MEMO_FIELDS[k] then raise('memoize: unknown field `' .. tostring(k) .. '`') end
  end
  local name = params.name
  if type(name) ~= 'string' then raise('memoize: missing field `name`') end
  if params.ttl == nil then raise('memoize: missing field `ttl`') end
  if mtype(params.capacity) ~= 'integer' or params.capacity < 1 then
    raise('memoize: `capacity` must be a positive integer')
  end
  local ttl = parse_duration(params.ttl)
  local capacity = params.capacity
  local cache = CACHES[name]
  if cache == nil or cache.sig ~= param_sig(params) then   -- other params replace the cache
    cache = {sig = param_sig(params), roots = {}, count = 0, tick = 0,
             lookups = 0, hits = 0, misses = 0, populated = 0, evicted = 0, entries = {}}
    CACHES[name] = cache
  end
  local function evict_one()
    local oldest, okey
    for e in next, cache.entries do
      if oldest == nil or e.used < oldest.used then oldest = e end
    end
    if oldest then
      oldest.node[oldest.key] = nil; cache.entries[oldest] = nil
      cache.count = cache.count - 1; cache.evicted = cache.evicted + 1
    end
  end
  return function(...)
    local n = select('#', ...)
    cache.lookups = cache.lookups + 1
    local node = cache.roots[n]
    if node == nil then node = {}; cache.roots[n] = node end
    for i = 1, n - 1 do
      local k = arg_key((select(i, ...)))
      local nxt = node[k]
      if nxt == nil then nxt = {}; node[k] = nxt end
      node = nxt
    end
    local last = n == 0 and NIL or arg_key((select(n, ...)))
    prune_expired()
    local e = node[last]
    if e ~= nil and NOW < e.expires then
      cache.hits = cache.hits + 1
      cache.tick = cache.tick + 1; e.used = cache.tick
      if e.failed then raise(e.failed) end
      return e.value
    end
    cache.misses = cache.misses + 1
    local r = tpack(pcall(fn, ...))
    local value, failed
    if r[1] then
      if r.n <= 2 then value = r[2] else value = {tunpack(r, 2, r.n)} end  -- several values: one table
      local ok, err = pcall(check_freezable, value, 0)
      if not ok then failed = tostring(err) end
    else
      local err = r[2]
      if mt_of(err) == RejectMT then err = REJ[err].text end   -- a reject becomes a plain error
      failed = 'memoize ' .. name .. ': ' .. tostring(err)
    end
    if type(value) == 'table' and not failed then value = proxy_of(value) end
    if e == nil then
      if cache.count >= capacity then evict_one() end
      e = {node = node, key = last}
      node[last] = e; cache.entries[e] = true; cache.count = cache.count + 1
    end
    -- lruttl keeps a failed populate as the entry's state for 60 s, whatever the ttl
    e.value, e.failed = (not failed) and value or nil, failed
    e.expires = NOW + (failed and FAILED_POPULATE_TTL or ttl)
    cache.tick = cache.tick + 1; e.used = cache.tick
    cache.populated = cache.populated + 1
    if failed then raise(failed) end
    return value
  end
end
function S.memo_stats(name)
  local c = CACHES[name]
  if c == nil then return nil end
  return {lookups = c.lookups, hits = c.hits, misses = c.misses, populated = c.populated,
          evicted = c.evicted, size = c.count}
end

-- ---------------------------------------------------------------- serde (files)
local function loader(pyfn)
  return function(path)
    if type(path) ~= 'string' then raise('error converting Lua ' .. type(path) .. ' to String') end
    local ok, value = PY[pyfn](path)
    if not ok then raise(value) end
    return value
  end
end
local serde = {json_load = loader('json_load'), toml_load = loader('toml_load')}
if OPT.with_serde then kumo.serde = serde end
if OPT.with_legacy_serde then kumo.json_load = serde.json_load; kumo.toml_load = serde.toml_load end

-- ---------------------------------------------------------------- time
local TIME = setmetatable({}, {__mode = 'k'})
local TimeMT = {__name = 'Time'}
local function make_time(ts) local u = new_ud(TimeMT); TIME[u] = ts; return u end
local TIME_FIELDS = {
  unix_timestamp = function(ts) return floor(ts) end,
  unix_timestamp_millis = function(ts) return floor(ts * 1000) end,
  rfc3339 = function(ts) return real_date('!%Y-%m-%dT%H:%M:%S+00:00', floor(ts)) end,
}
TimeMT.__index = function(u, k)
  local f = TIME_FIELDS[k]
  if f == nil then raise("attempt to get an unknown field '" .. tostring(k) .. "'") end
  return f(TIME[u])
end
TimeMT.__tostring = function(u) return real_date('!%Y-%m-%d %H:%M:%S UTC', floor(TIME[u])) end
kumo.time = {now = function() return make_time(NOW) end,
             parse_duration = function(v) return parse_duration(v) end}

-- ---------------------------------------------------------------- fs
local MD = setmetatable({}, {__mode = 'k'})
local MetadataMT = {__name = 'MetadataWrapper'}
MetadataMT.__index = function(u, k)
  local st = MD[u]
  local v = st[k]
  if v == nil then raise("attempt to get an unknown field '" .. tostring(k) .. "'") end
  if k == 'mtime' or k == 'atime' or k == 'ctime' then return make_time(v) end
  return v
end
local function stat(follow)
  return function(path)
    if type(path) ~= 'string' then raise('error converting Lua ' .. type(path) .. ' to String') end
    local ok, st = PY.stat(path, follow)
    if not ok then raise(st) end
    local u = new_ud(MetadataMT)
    MD[u] = st
    return u
  end
end
if OPT.with_fs then
  kumo.fs = {metadata_for_path = stat(true), symlink_metadata_for_path = stat(false)}
end

-- ---------------------------------------------------------------- digest
-- kumo.digest.<algo>(...): strings are digested as bytes, other values as their JSON;
-- the result is a BinaryResult userdata: .hex (lowercase), .bytes, .base64 ..., and
-- tostring() = hex (crates/mod-digest)
local BIN = setmetatable({}, {__mode = 'k'})
local BinaryResultMT = {__name = 'BinaryResult'}
local BIN_FIELDS = {hex = true, bytes = true, base32 = true, base32_nopad = true, base32hex = true,
  base32hex_nopad = true, base64 = true, base64_nopad = true, base64url = true, base64url_nopad = true}
local function binary_field(k, hex)  -- any field but .hex
  if not BIN_FIELDS[k] then raise("attempt to get an unknown field '" .. tostring(k) .. "'") end
  return PY.encode_digest(hex, k)
end
BinaryResultMT.__index = function(u, k)
  local hex = BIN[u]
  if k == 'hex' then return hex end
  return binary_field(k, hex)
end
BinaryResultMT.__tostring = function(u) return BIN[u] end
local function join(...)
  local parts = {}
  for i = 1, select('#', ...) do
    local v = select(i, ...)
    parts[i] = type(v) == 'string' and v or PY.json_key(v)
  end
  return concat(parts)
end
local digest = {}
-- a string that is not UTF-8 reaches Python as its bytes in hex (lupa passes strings as text)
local utf8len, HEX = utf8.len, {}
for i = 0, 255 do HEX[string.char(i)] = ('%02x'):format(i) end
for _, algo in ipairs({'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'sha512_256', 'sha3_256',
                       'sha3_384', 'sha3_512'}) do
  local py_hex_of = PY.digest(algo)   -- one Python function per algorithm: hashlib's own constructor
  local function hex_of(data)
    if utf8len(data) then return py_hex_of(data) end
    return py_hex_of((data:gsub('.', HEX)), true)
  end
  digest[algo] = function(first, ...)
    local data = first
    if type(first) ~= 'string' or select('#', ...) > 0 then data = join(first, ...) end
    local u = new_ud(BinaryResultMT)
    BIN[u] = hex_of(data)
    return u
  end
end
if OPT.native then
  -- sha256 (the module's digest) as kumod makes it: a C function whose BinaryResult holds
  -- the digest's bytes, .hex and tostring() in C; the other fields as above
  local NativeBinaryMT = {__name = 'BinaryResult', __tostring = OPT.native.binary_hex,
    __index = OPT.native.binary_index(binary_field)}
  digest.sha256 = OPT.native.binary_sha256(join, NativeBinaryMT)
end
if OPT.with_digest then kumo.digest = digest end

-- ---------------------------------------------------------------- logging
if OPT.with_log then
  for _, level in ipairs({'error', 'warn', 'info', 'debug'}) do
    kumo['log_' .. level] = function(...)
      local parts = {}
      for i = 1, select('#', ...) do parts[i] = tostring((select(i, ...))) end
      PY.log(level, concat(parts, ' '))
    end
  end
end
print = function(...)
  local parts = {}
  for i = 1, select('#', ...) do parts[i] = tostring((select(i, ...))) end
  PY.log('print', concat(parts, '\t'))
end

-- ---------------------------------------------------------------- reject, queue config
function kumo.reject(code, text)
  if mtype(code) ~= 'integer' or code < 0 or code > 65535 then
    raise('error converting Lua ' .. type(code) .. ' to u16')
  end
  if type(text) ~= 'string' then raise('error converting Lua ' .. type(text) .. ' to String') end
  local e = new_ud(RejectMT); REJ[e] = {code = code, text = text}
  error(e, 0)
end
local QC = setmetatable({}, {__mode = 'k'})
local QueueConfigMT = {__name = 'QueueConfig', __index = function(u, k) return QC[u][k] end}
local QC_FIELDS = {retry_interval = true, max_retry_interval = true, max_age = true,
  egress_pool = true, max_message_rate = true, protocol = true, reap_interval = true,
  refresh_interval = true, strategy = true, provider_name = true, shrink_policy = true}
function kumo.make_queue_config(p)
  if type(p) ~= 'table' then raise('invalid type: expected struct QueueConfig') end
  for k in pairs(p) do
    if not QC_FIELDS[k] then raise('unknown field `' .. tostring(k) .. '` in QueueConfig') end
  end
  local proto = p.protocol
  if type(proto) == 'table' and proto.custom_lua ~= nil then
    if type(proto.custom_lua) ~= 'table' or type(proto.custom_lua.constructor) ~= 'string' then
      raise('custom_lua: missing field `constructor`')
    end
  end
  local u = new_ud(QueueConfigMT); QC[u] = p
  return u
end

-- ---------------------------------------------------------------- addresses
local ADDR = setmetatable({}, {__mode = 'k'})
local AddrMT = {__name = 'EnvelopeAddress'}
AddrMT.__index = function(u, k)
  local a = ADDR[u]
  if k == 'user' then return a.user end
  if k == 'domain' then return a.domain end
  if k == 'email' then return a.email end
  raise("attempt to get an unknown field '" .. tostring(k) .. "'")
end
AddrMT.__tostring = function(u) return ADDR[u].email end
local function parse_envelope(text)
  local s = text:match('^<(.*)>$') or text
  if s == '' then return {user = '', domain = '', email = ''} end
  local user, domain = s:match('^(.*)@([^@]+)$')
  if user == nil or user == '' then raise('invalid address: ' .. text) end
  return {user = user, domain = domain, email = user .. '@' .. domain}
end
local function make_addr(text)
  local u = new_ud(AddrMT); ADDR[u] = parse_envelope(text)
  return u
end
S.make_addr = make_addr

-- From header (HeaderAddressList): .list flattens groups; .domain/.user/.email/.name
-- need exactly one entry that is a mailbox, not a group
local HDR = setmetatable({}, {__mode = 'k'})
local HeaderMT = {__name = 'AddressList'}
HeaderMT.__index = function(u, k)
  local parsed = HDR[u]
  if k == 'list' then return parsed.list end
  if k == 'domain' or k == 'user' or k == 'email' or k == 'name' then
    if not parsed.simple then
      raise(#parsed.list == 0 and 'no addresses' or 'is not a simple single address')
    end
    return parsed.list[1][k]
  end
  raise("attempt to get an unknown field '" .. tostring(k) .. "'")
end

-- ---------------------------------------------------------------- messages
local MSG = setmetatable({}, {__mode = 'k'})
local MessageMT = {__name = 'Message'}
local function deep_copy(v)
  if type(v) ~= 'table' and mt_of(v) ~= MemoMT then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = deep_copy(x) end
  return t
end
S.deep_copy = deep_copy
local function this(u, method)
  local m = MSG[u]
  if m == nil then raise("bad argument `self` to method 'Message." .. method .. "' (call it with `:`)") end
  return m
end
local M = {}
function M.id(u) return this(u, 'id').id end
function M.sender(u)
  local m = this(u, 'sender')
  if m.sender_ud == nil then m.sender_ud = make_addr(m.sender) end
  return m.sender_ud
end
function M.recipient_list(u)
  local m = this(u, 'recipient_list')
  local out = {}
  for i, r in ipairs(m.rcpt) do
    local a = m.rcpt_ud[i]
    if a == nil then a = make_addr(r); m.rcpt_ud[i] = a end
    out[i] = a
  end
  return out
end
function M.recipient(u)
  local list = M.recipient_list(u)
  if #list == 1 then return list[1] end
  if #list == 0 then return nil end
  return list
end
function M.set_recipient(u, v)
  local m = this(u, 'set_recipient')
  local new = {}
  if type(v) == 'string' then new[1] = v
  elseif mt_of(v) == AddrMT then new[1] = ADDR[v].email
  elseif type(v) == 'table' then
    for i = 1, #v do
      if type(v[i]) ~= 'string' then
        -- kumod converts the array through serde: pass strings (facts: it may refuse objects)
        raise('set_recipient: element ' .. i .. ': expected a string, got ' .. type(v[i]))
      end
      new[i] = v[i]
    end
    if #new == 0 then raise('set_recipient: empty recipient list') end
  else raise('error converting Lua ' .. type(v) .. ' to EnvelopeAddress') end
  for i = 1, #new do parse_envelope(new[i]) end       -- must parse
  m.rcpt = new; m.rcpt_ud = {}
end
function M.from_header(u)
  local m = this(u, 'from_header')
  if m.from == nil then return nil end
  if m.from == false then raise('failed to parse From header: ' .. tostring(m.from_raw)) end
  if m.from_ud == nil then m.from_ud = new_ud(HeaderMT); HDR[m.from_ud] = m.from end
  return m.from_ud
end
function M.get_meta(u, k)
  local m = this(u, 'get_meta')
  if type(k) ~= 'string' then raise('error converting Lua ' .. type(k) .. ' to String') end
  return deep_copy(m.meta[k])
end
function M.set_meta(u, k, v)
  local m = this(u, 'set_meta')
  if type(k) ~= 'string' then raise('error converting Lua ' .. type(k) .. ' to String') end
  local tv = type(v)
  if tv == 'userdata' and mt_of(v) ~= MemoMT or tv == 'function' then
    raise('set_meta: cannot convert a ' .. tv .. ' value to JSON')
  end
  m.meta[k] = deep_copy(v)
end
function M.get_first_named_header_value(u, name)
  local m = this(u, 'get_first_named_header_value')
  if name:lower() == 'from' then return m.from_raw end
  return nil
end
MessageMT.__index = function(u, k)
  local f = M[k]
  if f == nil then raise("attempt to get an unknown field '" .. tostring(k) .. "'") end
  return f
end
MessageMT.__tostring = function(u) return 'Message: ' .. MSG[u].id end

-- from: nil (no header) | false (unparseable) | {simple =, list = {{name, user, domain, email}...}}
function S.make_message(id, sender, rcpts, from_raw, from, meta)
  local u = new_ud(MessageMT)
  MSG[u] = {id = id, sender = sender, rcpt = rcpts, rcpt_ud = {}, from_raw = from_raw,
            from = from, meta = meta or {}}
  return u
end
function S.msg_state(u) return MSG[u] end

-- connection metadata
local CONN = setmetatable({}, {__mode = 'k'})
local ConnMT = {__name = 'ConnectionMetaData'}
local CM = {}
function CM.get_meta(u, k)
  if CONN[u] == nil then raise("bad argument `self` (call it with `:`)") end
  return deep_copy(CONN[u][k])
end
function CM.set_meta(u, k, v)
  if CONN[u] == nil then raise("bad argument `self` (call it with `:`)") end
  if type(k) ~= 'string' then raise('error converting Lua ' .. type(k) .. ' to String') end
  CONN[u][k] = deep_copy(v)
end
ConnMT.__index = function(u, k)
  local f = CM[k]
  if f == nil then raise("attempt to get an unknown field '" .. tostring(k) .. "'") end
  return f
end
function S.make_conn(meta) local u = new_ud(ConnMT); CONN[u] = meta or {}; return u end
function S.conn_state(u) return CONN[u] end

-- ---------------------------------------------------------------- flows
-- SMTP DATA: smtp_server_message_received per message; one reject rejects them all.
function S.smtp_transaction(msgs, conn)
  for i = 1, #msgs do
    local st, a, b = fire('smtp_server_message_received', msgs[i], conn)
    if st == 'reject' then return 'rejected', a, b end
    if st == 'error' then return 'tempfail', 451, a end
  end
  return 'accepted'
end
function S.fire_event(name, ...) return fire(name, ...) end
-- HTTP injection: http_message_generated; a reject fails this recipient only.
function S.http_inject(msg)
  local st, a, b = fire('http_message_generated', msg, {})
  if st == 'reject' then return 'rejected', a, b end
  if st == 'error' then return 'failed', nil, a end
  return 'ok'
end
-- Delivery: resolve the queue config through the get_queue_config chain.
function S.queue_config(domain, tenant, campaign, routing_domain)
  local st, n, v = fire('get_queue_config', domain, tenant, campaign, routing_domain)
  if st == 'none' then return 'default' end
  if st ~= 'ok' then return 'error', tostring(n) .. ' ' .. tostring(v) end
  if mt_of(v) ~= QueueConfigMT then
    return 'error', 'get_queue_config: failed to convert ' .. type(v) .. ' to QueueConfig'
  end
  local proto = QC[v].protocol
  if type(proto) == 'table' and type(proto.custom_lua) == 'table' then
    return 'custom_lua', proto.custom_lua.constructor
  end
  return 'config'
end
function S.lua_deliver(constructor, domain, tenant, campaign, msg)
  local st, n, conn = fire(constructor, domain, tenant, campaign)
  if st == 'none' then return 'error', nil, 'no handler for ' .. constructor end
  if st ~= 'ok' then return 'error', nil, tostring(n) .. ' ' .. tostring(conn) end
  if type(conn) ~= 'table' or type(conn.send) ~= 'function' then
    return 'error', nil, 'constructor did not return a connection with a send method'
  end
  local s, a, b = call(conn.send, conn, msg)
  if s == 'reject' then
    if a >= 400 and a < 500 then return 'TransientFailure', a, b end
    return 'Bounce', a, b
  end
  if s == 'error' then return 'TransientFailure', nil, a end
  return 'Delivery', 250, tostring(b)
end

-- what kumod does not have
debug = nil
package.loaded.debug = nil
python = nil
package.loaded.python = nil
return S
"""


def _digest_hex(algo: str):
    """The stand-in's kumo.digest.<algo> core in Python: the lowercase hex digest of a Lua
    string's bytes. lupa hands a string over as UTF-8 text (it refuses other bytes), so
    the prelude sends a string that is not UTF-8 as its bytes in hex (as_hex)."""
    new = getattr(hashlib, algo, None) or (lambda raw: hashlib.new(algo, raw))

    def hex_of(data: str, as_hex: bool = False) -> str:
        return new(bytes.fromhex(data) if as_hex else data.encode()).hexdigest()
    return hex_of


def _encode_digest(hex_digest: str, encoding: str):
    raw = bytes.fromhex(hex_digest)
    if encoding == "bytes":
        return raw
    family, _, nopad = encoding.partition("_")
    text = {"base32": base64.b32encode, "base32hex": base64.b32hexencode, "base64": base64.b64encode,
            "base64url": base64.urlsafe_b64encode}[family](raw).decode()
    return text.rstrip("=") if nopad else text


def _ret(value, n: int) -> tuple:
    """A Lua call's results as a tuple of exactly n (lupa gives a bare value for one)."""
    t = value if isinstance(value, tuple) else (value,)
    return (t + (None,) * n)[:n]


# ----------------------------------------------------------------------------- From header
# msg:from_header() in kumod: mailparsing parses the RAW header value as an RFC 5322
# address-list (obsolete forms included), decoding RFC 2047 encoded words in display
# names; the result (crates/message/src/address.rs HeaderAddressList) answers
# .user/.domain/.email/.name only when it is exactly one mailbox, not a group, and
# raises otherwise; .list flattens groups. The parser below follows that grammar.

class _FromSyntaxError(ValueError):
    pass


_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")


def _is_atext(ch: str) -> bool:
    return ch in _ATEXT or ord(ch) > 127      # RFC 6532: UTF-8 is atext too


def _tokens(value: str) -> list[tuple[str, str]]:
    """(kind, text): atom, quoted, literal, or a special character; CFWS dropped."""
    out, i, n = [], 0, len(value)
    while i < n:
        ch = value[i]
        if ch in " \t\r\n":
            i += 1
        elif ch == "(":
            depth = 0
            while i < n:
                c = value[i]
                if c == "\\":
                    i += 1
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            if i >= n:
                raise _FromSyntaxError("unterminated comment")
            i += 1
        elif ch == '"':
            j, text = i + 1, []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                text.append(value[j])
                j += 1
            if j >= n:
                raise _FromSyntaxError("unterminated quoted string")
            out.append(("quoted", "".join(text)))
            i = j + 1
        elif ch == "[":
            j = value.find("]", i)
            if j < 0:
                raise _FromSyntaxError("unterminated domain literal")
            out.append(("literal", value[i:j + 1]))
            i = j + 1
        elif _is_atext(ch):
            j = i
            while j < n and _is_atext(value[j]):
                j += 1
            out.append(("atom", value[i:j]))
            i = j
        elif ch in '<>@,;:.':
            out.append((ch, ch))
            i += 1
        else:
            raise _FromSyntaxError(f"unexpected {ch!r}")
    return out


def _decode_encoded_word(atom: str) -> str | None:
    m = _ENCODED_WORD.fullmatch(atom)
    if not m:
        return None
    charset, enc, text = m.groups()
    if enc in "Qq":
        raw = re.sub(rb"=([0-9A-Fa-f]{2})", lambda x: bytes([int(x.group(1), 16)]),
                     text.replace("_", " ").encode("ascii", "replace"))
    else:
        raw = base64.b64decode(text + "=" * (-len(text) % 4))
    return raw.decode(charset, "replace")


def _phrase_text(words: list[tuple[str, str]]) -> str:
    """A display name: encoded words decoded and joined without the space between two
    of them; an obs-phrase '.' stays attached to the word before it."""
    parts, prev_encoded = [], False
    for kind, text in words:
        decoded = _decode_encoded_word(text) if kind == "atom" else None
        if parts and kind != "." and not (prev_encoded and decoded is not None):
            parts.append(" ")
        parts.append(decoded if decoded is not None else text)
        prev_encoded = decoded is not None
    return "".join(parts)


class _FromParser:
    def __init__(self, value: str):
        self.toks = _tokens(value)
        self.pos = 0

    def peek(self) -> str | None:
        return self.toks[self.pos][0] if self.pos < len(self.toks) else None

    def take(self, kind: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.toks) or (kind and self.toks[self.pos][0] != kind):
            raise _FromSyntaxError(f"expected {kind or 'more'}")
        self.pos += 1
        return self.toks[self.pos - 1]

    def words(self) -> list[tuple[str, str]]:
        out = []
        while self.peek() in ("atom", "quoted", "."):   # obs-phrase allows '.'
            out.append(self.take())
        return out

    def domain(self) -> str:
        if self.peek() == "literal":
            return self.take()[1]
        parts = [self.take("atom")[1]]
        while self.peek() == ".":
            self.take(".")
            parts.append(self.take("atom")[1])   # a trailing dot is no domain
        return ".".join(parts)

    @staticmethod
    def local_part(words: list[tuple[str, str]]) -> str:
        # word *("." word), obs-local-part included; a phrase of bare words is no local part
        if not words or len(words) % 2 == 0:
            raise _FromSyntaxError("bad local part")
        for i, (kind, _) in enumerate(words):
            if (i % 2 == 1) != (kind == "."):
                raise _FromSyntaxError("bad local part")
        return "".join(text for _, text in words)

    def angle_addr(self) -> tuple[str, str]:
        self.take("<")
        if self.peek() == "@":                          # obs-route: @a,@b:
            while self.peek() in ("@", ","):
                if self.take()[0] == "@":
                    self.domain()
            self.take(":")
        user = self.local_part(self.words())
        self.take("@")
        domain = self.domain()
        self.take(">")
        return user, domain

    def mailbox(self, words: list[tuple[str, str]]) -> dict:
        if self.peek() == "<":
            user, domain = self.angle_addr()
            name = _phrase_text(words) if words else None
        else:
            user = self.local_part(words)
            self.take("@")
            domain = self.domain()
            name = None
        return {"name": name, "user": user, "domain": domain, "email": _email(user, domain)}

    def address_list(self) -> dict:
        entries = []
        while True:
            words = self.words()
            if self.peek() == ":":                      # group: name: [mailbox-list] ;
                self.take(":")
                members = []
                while self.peek() != ";":
                    members.append(self.mailbox(self.words()))
                    if self.peek() != ",":
                        break
                    self.take(",")
                self.take(";")
                entries.append(("group", members))
            else:
                entries.append(("mailbox", [self.mailbox(words)]))
            if self.peek() is None:
                break
            self.take(",")
        simple = len(entries) == 1 and entries[0][0] == "mailbox"
        return {"simple": simple, "list": [m for _, members in entries for m in members]}


def _email(user: str, domain: str) -> str:
    dot_atom = user and all(part and all(_is_atext(c) for c in part) for part in user.split("."))
    if dot_atom:
        return f"{user}@{domain}"
    quoted = user.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}"@{domain}'


def parse_from_header(value: str | None):
    """None (no header) | False (kumod's parser raises) | {"simple": bool, "list": [mailbox]}
    where a mailbox is {name, user, domain, email} as HeaderAddress gives them."""
    if value is None:
        return None
    try:
        return _FromParser(value).address_list()
    except _FromSyntaxError:
        return False


class Message:
    """Python handle on a Message userdata living in a Kumod's Lua state."""

    def __init__(self, kumod: "Kumod", ud):
        self._k = kumod
        self.ud = ud

    @property
    def _state(self):
        return self._k._S.msg_state(self.ud)

    @property
    def recipients(self) -> list[str]:
        return list(self._k.from_lua(self._state.rcpt))

    @property
    def sender(self) -> str:
        return self._state.sender

    @property
    def meta(self) -> dict:
        return self._k.from_lua(self._state.meta)

    def __repr__(self):
        return f"Message(recipients={self.recipients!r}, meta={self.meta!r})"


class Kumod:
    """One kumod policy Lua state with its fakes and flow helpers.

    policy_dir        prepended to package.path (`<dir>/?.lua`); more in extra_paths
    clock             FakeClock (memoize TTLs, os.time, kumo.time.now)
    with_fs           False: no kumo.fs (kumod older than 2026.04.09)
    with_serde        False: no kumo.serde (kumod older than 2024.09.02)
    with_legacy_serde kumo.json_load / kumo.toml_load
    with_log          False: no kumo.log_* (kumod older than 2025.03.19)
    with_digest       False: no kumo.digest
    native            userdata and kumo.digest.sha256 in C (tests/standin_native.c), as
                      kumod's are native: None = when it builds (else the Python
                      fallback), True = required, False = the Python fallback.
                      `.native` says which is in use, `.native_why` why not,
                      `.native_sha256_block` which sha256 block function.
    """

    def __init__(self, policy_dir: os.PathLike | str | None = None, *, clock: FakeClock | None = None,
                 with_fs: bool = True, with_serde: bool = True, with_legacy_serde: bool = True,
                 with_log: bool = True, with_digest: bool = True, extra_paths: Sequence[os.PathLike | str] = (),
                 native: bool | None = None):
        self.clock = clock or FakeClock()
        self.logs: list[tuple[str, str]] = []
        self.io_paths: list[str] = []      # every path the fakes touched (stat / load)
        self._record_builders: dict = {}    # field count -> Lua function (see _records)
        self.fake_inode: int | None = None  # reported by kumo.fs instead of the real inode
        self._msg_ids = 0
        self.lua = lua54.LuaRuntime(unpack_returned_tuples=True, register_eval=False)
        dirs = ([policy_dir] if policy_dir else []) + list(extra_paths)
        path = ";".join(f"{Path(d).resolve()}/?.lua" for d in dirs)
        if path:
            self.lua.globals().package.path = path + ";" + self.lua.globals().package.path
        native_mod, self.native_why = None, "native=False"
        if native is not False:
            lib, self.native_why = native_library()
            if lib is not None:
                native_mod, self.native_why = _open_native(self.lua, lib)
            if native_mod is None and native:
                raise RuntimeError(f"the stand-in's native part is unavailable: {self.native_why}")
        self.native = native_mod is not None
        self.native_sha256_block = native_mod.sha256_block if self.native else None  # "sha-ni" | "portable"
        py = self.lua.table_from({
            "seeds": lambda n: self.lua.table_from([_Seed() for _ in range(n)]),
            "json_load": self._json_load,
            "toml_load": self._toml_load,
            "json_key": lambda v: json.dumps(self.from_lua(v), sort_keys=True),
            "stat": self._stat,
            "log": lambda level, text: self.logs.append((level, text)),
            "digest": _digest_hex,
            "encode_digest": _encode_digest,
        })
        opt = self.lua.table_from({
            "now": self.clock.now(), "multi": self.lua.table_from(list(MULTI_HANDLER_EVENTS)),
            "with_fs": with_fs, "with_serde": with_serde, "with_legacy_serde": with_legacy_serde,
            "with_log": with_log, "with_digest": with_digest, "native": native_mod,
        })
        self._S = self.lua.execute(_PRELUDE, py, opt)
        self.clock._listeners.append(self._S.set_clock)

    # ---- Python callbacks (file IO only; the hot paths never come here)
    def _json_load(self, path):
        self.io_paths.append(path)
        try:
            with open(path, "rb") as f:
                data = orjson.loads(f.read())  # serde_json's strictness: no NaN, no lone surrogate
        except (OSError, ValueError) as err:
            return False, f"{path}: {err}"
        return True, self._decoded(data)

    def _toml_load(self, path):
        self.io_paths.append(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, ValueError) as err:
            return False, f"{path}: {err}"
        return True, self._decoded(data)

    def _stat(self, path, follow):
        self.io_paths.append(path)
        try:
            st = os.stat(path) if follow else os.lstat(path)
        except OSError as err:
            return False, f"{err.strerror} (os error {err.errno})"
        ino = st.st_ino if self.fake_inode is None else self.fake_inode
        if ino > _I64_MAX:
            ino = float(ino)  # mlua converts a u64 that does not fit an i64 to a Lua float
        return True, self.lua.table_from({
            "len": st.st_size, "size": st.st_size, "ino": ino, "dev": st.st_dev,
            "mode": st.st_mode, "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid,
            "is_file": _stat.S_ISREG(st.st_mode), "is_dir": _stat.S_ISDIR(st.st_mode),
            "is_symlink": _stat.S_ISLNK(st.st_mode), "readonly": st.st_mode & 0o222 == 0,
            "mtime": st.st_mtime_ns / 1e9, "atime": st.st_atime_ns / 1e9,
            "ctime": st.st_ctime_ns / 1e9,
        })

    # ---- conversion
    def _decoded(self, value):
        """A decoded file as the Lua tables kumod's serde conversion makes of it. A map of
        records (maps of scalars: a snapshot's recipients) is built field by field in Lua,
        the same tables as table_from(recursive=True) makes in half its time: a module's
        first lookup in a snapshot is mostly this conversion, which kumod does in Rust."""
        if isinstance(value, dict):
            records = self._records(value)
            if records is not None:
                return records
            return self.lua.table_from({k: self._decoded(v) for k, v in value.items()})
        if isinstance(value, list):
            return self.lua.table_from([self._decoded(v) for v in value])
        return value

    def _records(self, value: dict):
        rows = list(value.values())
        if len(rows) < 64 or set(map(type, rows)) != {dict}:
            return None
        fields = sorted(set().union(*map(dict.keys, rows)))
        if not 1 <= len(fields) <= 8:
            return None
        args = [self.lua.table_from(list(value)), len(rows)]
        for name in fields:
            column = [row.get(name) for row in rows]   # None: the field is absent (nil)
            if not set(map(type, column)) <= _SCALARS:
                return None
            args += [name, self.lua.table_from(column)]
        build = self._record_builders.get(len(fields))
        if build is None:
            n = len(fields)
            params = ", ".join(f"f{i}, c{i}" for i in range(n))
            fields_of_i = ", ".join(f"[f{i}] = c{i}[i]" for i in range(n))
            build = self._record_builders[n] = self.lua.execute(
                f"return function(keys, n, {params}) local out = {{}} "
                f"for i = 1, n do out[keys[i]] = {{{fields_of_i}}} end return out end")
        return build(*args)

    def to_lua(self, value):
        if isinstance(value, dict):
            return self.lua.table_from(value, recursive=True)
        if isinstance(value, (list, tuple)):
            return self.lua.table_from(list(value), recursive=True)
        return value

    def from_lua(self, value, depth: int = 0):
        """Lua tables (and MemoizedTable proxies) -> dict / list, recursively."""
        if lua54.lua_type(value) == "table":
            items = dict(value.items())
            if items and all(isinstance(k, int) for k in items) and \
                    sorted(items) == list(range(1, len(items) + 1)):
                return [self.from_lua(items[i], depth + 1) for i in range(1, len(items) + 1)]
            return {k: self.from_lua(v, depth + 1) for k, v in items.items()}
        if lua54.lua_type(value) == "userdata" and self._S.MemoMT is not None:
            copied = self._S.deep_copy(value)
            if lua54.lua_type(copied) == "table":
                return self.from_lua(copied, depth + 1)
        return value

    # ---- running code
    def execute(self, code: str, name: str = "=policy"):
        r = self._S.run_chunk(code, name)
        status, *rest = r if isinstance(r, tuple) else (r,)
        if status == "ok":
            return rest[1:] if len(rest) > 2 else (rest[1] if len(rest) == 2 else None)
        if status == "reject":
            raise LuaError(f"kumo.reject({rest[0]}, {rest[1]!r}) escaped")
        raise LuaError(rest[0])

    def eval(self, expr: str):
        return self.execute("return " + expr, "=eval")

    def pcall(self, fn, *args):
        """pcall a Lua function from Python: (True, values...) or (False, error text)."""
        return self._pcall(fn, *args)

    @property
    def _pcall(self):
        runner = self.__dict__.get("_pcall_fn")
        if runner is None:
            runner = self.execute("return function(f, ...) "
                                  "local r = table.pack(pcall(f, ...)) "
                                  "if not r[1] then r[2] = tostring(r[2]) end "
                                  "return table.unpack(r, 1, r.n) end", "=pcall")
            self.__dict__["_pcall_fn"] = runner
        return runner

    def handler_count(self, event: str) -> int:
        return self._S.handler_count(event)

    def memo_stats(self, name: str) -> dict | None:
        stats = self._S.memo_stats(name)
        return None if stats is None else dict(stats.items())

    def memo_names(self) -> list[str]:
        return sorted(self._S.CACHES.keys())

    def metric_series(self) -> int:
        """Series in kumod's metrics for these caches: lruttl labels 11 metrics by cache
        name (lookup, evict, expire, hit, miss, insert, populated, error, stale,
        waiting_populate, cache_size), mod-memoize 4 more; none is ever removed."""
        return SERIES_PER_MEMOIZE_CACHE * len(self.memo_names())

    def lua_memory_bytes(self) -> int:
        """Bytes in use by this Lua state after a full collection (memoized data included:
        the stand-in keeps it in Lua, kumod in Rust)."""
        return int(self.execute("collectgarbage('collect'); collectgarbage('collect') "
                                "return collectgarbage('count') * 1024"))

    def logged(self, level: str | None = None) -> list[str]:
        return [t for (lv, t) in self.logs if level is None or lv == level]

    @property
    def errors_logged(self) -> list[str]:
        return self.logged("error")

    # ---- objects
    def make_message(self, sender: str, recipients: str | Sequence[str], *,
                     from_header: str | None = None, meta: dict | None = None) -> Message:
        if isinstance(recipients, str):
            recipients = [recipients]
        self._msg_ids += 1
        parsed = parse_from_header(from_header)
        from_lua = None if parsed is None else (False if parsed is False else self.to_lua(parsed))
        ud = self._S.make_message(f"msg{self._msg_ids}", sender, self.to_lua(list(recipients)),
                                  from_header, from_lua, self.to_lua(meta or {}))
        return Message(self, ud)

    def make_conn(self, meta: dict | None = None):
        return self._S.make_conn(self.to_lua(meta or {}))

    def conn_meta(self, conn) -> dict:
        return self.from_lua(self._S.conn_state(conn))

    # ---- flows
    def smtp_transaction(self, msgs: Sequence[Message], conn=None) -> TxnResult:
        conn = conn if conn is not None else self.make_conn()
        status, code, text = _ret(self._S.smtp_transaction(self.lua.table_from([m.ud for m in msgs]), conn), 3)
        if status == "tempfail":
            return TxnResult("tempfail", code, None, error=text, messages=list(msgs))
        return TxnResult(status, code, text, messages=list(msgs))

    def smtp_session(self, sender: str, recipients: Sequence[str], *,
                     from_header: str | None = None) -> tuple[list[RcptResult], TxnResult | None]:
        """MAIL FROM, RCPT TO each, then DATA with the accepted recipients (one message)."""
        conn = self.make_conn()
        st, *rest = _ret(self._S.fire_event("smtp_server_mail_from", self._S.make_addr(sender), conn), 3)
        if st == "reject":
            return [RcptResult(r, "rejected", rest[0], rest[1]) for r in recipients], None
        results, accepted = [], []
        for rcpt in recipients:
            st, *rest = _ret(self._S.fire_event("smtp_server_rcpt_to", self._S.make_addr(rcpt), conn), 3)
            if st == "reject":
                results.append(RcptResult(rcpt, "rejected", rest[0], rest[1]))
            elif st == "error":
                results.append(RcptResult(rcpt, "tempfail", 451, None, error=rest[0]))
            else:
                results.append(RcptResult(rcpt, "accepted"))
                accepted.append(rcpt)
        if not accepted:
            return results, None
        msg = self.make_message(sender, accepted, from_header=from_header)
        return results, self.smtp_transaction([msg], conn)

    def http_inject(self, msg: Message) -> HttpResult:
        status, code, text = _ret(self._S.http_inject(msg.ud), 3)
        if status == "failed":
            return HttpResult("failed", None, None, error=text)
        return HttpResult(status, code, text)

    def deliver_via_queue(self, msg: Message) -> DeliveryOutcome:
        meta = msg.meta
        queue = meta.get("queue")
        if not isinstance(queue, str):
            queue = msg.recipients[0].rpartition("@")[2].lower()
        if queue == "null":
            return DeliveryOutcome("Discarded", queue)
        # queue name: [campaign:][tenant@]domain[!routing_domain]
        rest, _, routing = queue.partition("!")
        tenant = campaign = None
        if "@" in rest:
            head, _, domain = rest.rpartition("@")
            if ":" in head:
                campaign, _, tenant = head.partition(":")
                tenant = tenant or None
            else:
                tenant = head or None
        else:
            domain = rest
        kind, detail = _ret(self._S.queue_config(domain, tenant, campaign, routing or None), 2)
        if kind == "error":
            return DeliveryOutcome("QueueError", queue, error=detail)
        if kind != "custom_lua":
            return DeliveryOutcome("Smtp", queue)
        outcome, code, text = _ret(self._S.lua_deliver(detail, domain, tenant, campaign, msg.ud), 3)
        if outcome == "error":
            return DeliveryOutcome("QueueError", queue, error=text)
        return DeliveryOutcome(outcome, queue, code, text, protocol="Lua")
