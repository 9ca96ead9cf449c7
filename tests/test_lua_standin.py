"""Self-tests of tests/kumo_standin.py: the kumod behaviours the module's tests rely on,
each on both of the stand-in's paths: its native part (tests/standin_native.c: C userdata
and sha256) and the Python fallback used without a C compiler."""

import base64
import hashlib
import json
import os
import shutil
import threading

import pytest

import kumo_standin
from kumo_standin import NATIVE_ENV, FakeClock, Kumod, LuaError, build_native, native_library


@pytest.fixture(params=["native", "python"])
def path(request):
    if request.param == "native" and native_library()[0] is None:
        pytest.skip(f"no native part: {native_library()[1]}")
    return request.param


@pytest.fixture
def k(path):
    k = Kumod(clock=FakeClock(1_000_000), native=path == "native")
    assert k.native is (path == "native")
    return k


def test_kumo_is_a_module_not_a_global_and_no_debug(k):
    assert k.eval("kumo") is None
    assert k.eval("require('kumo') ~= nil") is True
    assert k.eval("debug") is None and k.eval("python") is None


def test_single_handler_events_error_on_second_registration(k):
    k.execute("local kumo = require 'kumo'; kumo.on('http_message_generated', function() end)")
    with pytest.raises(LuaError, match="already has a handler"):
        k.execute("local kumo = require 'kumo'; kumo.on('http_message_generated', function() end)")


def test_get_queue_config_chain_stops_at_return_nil(k):
    k.execute("""
      local kumo = require 'kumo'
      kumo.on('get_queue_config', function(domain) if domain == 'mine' then return nil end end)
      kumo.on('get_queue_config', function(domain) return kumo.make_queue_config { egress_pool = 'p' } end)
    """)
    m = k.make_message("a@example.com", ["x@gmail.com"])
    assert k.deliver_via_queue(m).kind == "Smtp"        # first handler returned nothing
    m = k.make_message("a@example.com", ["x@mine"])
    out = k.deliver_via_queue(m)
    assert out.kind == "QueueError" and "QueueConfig" in out.error  # `return nil` is a value


def test_memoize_returns_userdata_proxies(k):
    k.execute("""
      local kumo = require 'kumo'
      calls = 0
      f = kumo.memoize(function(a) calls = calls + 1; return {x = a, nested = {1, 2}} end,
                       {name = 'user.t', ttl = '5 seconds', capacity = 2})""")
    assert k.eval("type(f('a'))") == "userdata"
    assert k.eval("f('a').nested[2]") == 2 and k.eval("#f('a').nested") == 2
    for expr in ("rawget(f('a'), 'x')", "next(f('a'))", "table.concat(f('a').nested)"):
        with pytest.raises(LuaError):
            k.eval(expr)
    assert k.eval("calls") == 1
    k.clock.advance(5)
    k.eval("f('a')")
    assert k.eval("calls") == 2, "ttl expired"
    k.eval("f('b')"); k.eval("f('c')")
    assert k.memo_stats("user.t")["evicted"] == 1 and k.memo_stats("user.t")["size"] == 2


def test_memoize_refuses_userdata_results_and_caches_errors_for_60s(k):
    """lruttl stores a failed populate as the entry (ItemState::Failed) for 60 s."""
    k.execute("""
      local kumo = require 'kumo'
      g = kumo.memoize(function() return kumo.time.now() end, {name = 'user.u', ttl = '1 minute', capacity = 5})
      n = 0
      h = kumo.memoize(function() n = n + 1; error('boom') end, {name = 'user.e', ttl = '1 hour', capacity = 5})""")
    with pytest.raises(LuaError, match="cannot memoize"):
        k.eval("g()")
    for _ in range(2):
        with pytest.raises(LuaError, match="boom"):
            k.eval("h()")
    assert k.eval("n") == 1
    k.clock.advance(59)
    with pytest.raises(LuaError, match="boom"):
        k.eval("h()")
    assert k.eval("n") == 1
    k.clock.advance(2)
    with pytest.raises(LuaError, match="boom"):
        k.eval("h()")
    assert k.eval("n") == 2


def test_memoize_prunes_expired_entries_every_30s(k):
    k.execute("""f = require('kumo').memoize(function(a) return {a} end,
                 {name = 'user.p', ttl = '10 seconds', capacity = 5})""")
    k.eval("f('a')")
    assert k.memo_stats("user.p")["size"] == 1
    k.clock.advance(31)
    k.eval("f('b')")
    assert k.memo_stats("user.p")["size"] == 1, "the expired 'a' was pruned"
    assert k.metric_series() == 15


def test_os_time_follows_clock(k):
    assert k.eval("os.time()") == 1_000_000
    k.clock.advance(10.5)
    assert k.eval("os.time()") == 1_000_010
    assert k.eval("os.date('!%Y-%m-%d')") == "1970-01-12"


def test_errors_are_userdata_and_reject_is_an_object(k, tmp_path):
    assert k.eval("(function() local ok, e = pcall(require('kumo').fs.metadata_for_path, '/nonexistent') "
                  "return type(e) .. ' ' .. tostring(e) end)()").startswith("userdata No such file")
    with pytest.raises(LuaError, match="concatenate"):
        k.eval("(function() local ok, e = pcall(require('kumo').fs.metadata_for_path, '/nonexistent') "
               "return 'x' .. e end)()")
    k.execute("local kumo = require 'kumo'; kumo.on('http_message_generated', function(msg) "
              "local ok, e = pcall(kumo.reject, 550, 'no'); if ok then return end; error(e) end)")
    assert k.http_inject(k.make_message("a@example.com", ["x@y.example"])).code == 550


def test_fs_metadata(k, tmp_path):
    f = tmp_path / "f.json"
    f.write_text("{}")
    k.lua.globals()["P"] = str(f)
    assert k.eval("require('kumo').fs.metadata_for_path(P).len") == 2
    assert k.eval("type(require('kumo').fs.metadata_for_path(P).mtime.unix_timestamp_millis)") == "number"
    with pytest.raises(LuaError, match="unknown field"):
        k.eval("require('kumo').fs.metadata_for_path(P).path")
    assert Kumod(with_fs=False).eval("require('kumo').fs") is None


def test_message_objects(k):
    m = k.make_message("<b@Example.com>", ["u@x.example", "v@y.example"], from_header='"N" <n@Example.com>',
                       meta={"a": 1})
    k.lua.globals()["M"] = m.ud
    assert k.eval("M:sender().domain") == "Example.com"
    assert k.eval("tostring(M:recipient_list()[2])") == "v@y.example"
    assert k.eval("type(M:recipient())") == "table"
    assert k.eval("M:from_header().domain") == "Example.com"
    with pytest.raises(LuaError, match="call it with"):
        k.eval("M.get_meta('a')")
    with pytest.raises(LuaError, match="expected a string"):
        k.execute("M:set_recipient({M:recipient_list()[1]})")
    k.execute("M:set_recipient({'w@z.example'}); M:set_meta('t', {1, 2})")
    assert m.recipients == ["w@z.example"] and m.meta["t"] == [1, 2]
    bad = k.make_message("b@example.com", ["u@x.example"], from_header="nonsense")
    k.lua.globals()["B"] = bad.ud
    with pytest.raises(LuaError):
        k.eval("B:from_header()")


def test_smtp_reject_of_one_message_rejects_the_transaction(k):
    k.execute("local kumo = require 'kumo'; kumo.on('smtp_server_message_received', function(msg) "
              "if msg:recipient().user == 'bad' then kumo.reject(550, 'no') end end)")
    good = k.make_message("a@example.com", ["good@x.example"])
    bad = k.make_message("a@example.com", ["bad@x.example"])
    assert k.smtp_transaction([good]).accepted
    assert k.smtp_transaction([good, bad]).rejected


def test_json_load_builds_the_tables_serde_would(k, tmp_path):
    """kumo.serde.json_load: a map of records (built column by column) and every other
    shape come out as the same Lua tables; absent and null fields are nil."""
    records = {f"user{i}@example.net": {"reason": "bounce", "since": i, **({"expires": i + 1} if i % 2 else {})}
               for i in range(100)}
    records["odd@example.net"] = {"reason": "manual", "since": 1.5, "note": None, "flag": True}
    doc = {"format": "f", "version": 1, "recipients": records, "list": [1, "a", {"x": [2, 3]}],
           "nested": {f"k{i}": {"deep": {"n": i}} for i in range(70)}}
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    loaded = k.from_lua(k.eval(f"require('kumo').serde.json_load({json.dumps(str(path))})"))
    records["odd@example.net"].pop("note")
    assert loaded == doc
    assert k.eval(f"math.type(require('kumo').serde.json_load({json.dumps(str(path))})"
                  ".recipients['user1@example.net'].since)") == "integer"
    for bad in ("{not json", '{"a": NaN}', '{"a": "\\ud800"}'):
        path.write_text(bad)
        with pytest.raises(LuaError):
            k.eval(f"require('kumo').serde.json_load({json.dumps(str(path))})")


def test_memoize_checks_every_level_of_a_map_of_records(k):
    k.execute("""
      local kumo = require 'kumo'
      bad = kumo.memoize(function(n)
        local t = {}
        for i = 1, n do t['r' .. i] = {reason = 'x', since = i} end
        t.r2.since = kumo.time.now()          -- a userdata inside one record
        return t
      end, {name = 'user.records', ttl = 5, capacity = 2})""")
    with pytest.raises(LuaError, match="cannot memoize a userdata"):
        k.eval("bad(3)")


def test_userdata_keep_what_they_are_while_others_come_and_go(k):
    """Every userdata wraps a fresh Python object (the lupa pitfall: an object wrapped
    again while an older wrapper awaits the collector can hand out a live userdata a
    second time): one still held keeps its own kind and value through any churn."""
    k.execute("""
      local kumo = require 'kumo'
      kept = {}
      for i = 1, 5000 do
        local d = kumo.digest.sha256('x' .. i)
        local ok, e = pcall(kumo.reject, 550, 'r' .. i)
        if i % 97 == 0 then kept[#kept + 1] = {i, d, e} end
        if i % 700 == 0 then collectgarbage() end
      end
      collectgarbage()""")
    bad = k.eval("""(function()
      local out = {}
      for _, x in ipairs(kept) do
        local i, d, e = x[1], x[2], x[3]
        if d.hex ~= require('kumo').digest.sha256('x' .. i).hex or tostring(e) ~= '550 r' .. i then
          out[#out + 1] = i
        end
      end
      return #out end)()""")
    assert bad == 0 and k.eval("#kept") == 51


# ----------------------------------------------------------------------------- the native part

def test_native_part_builds_where_there_is_a_compiler():
    """A machine with gcc (CI's) uses the native part: a broken build must not pass
    unnoticed as the slower fallback."""
    if os.environ.get(NATIVE_ENV) == "0" or not shutil.which(os.environ.get("CC") or "gcc"):
        pytest.skip("no C compiler, or the native part switched off")
    lib, why = native_library()
    assert lib is not None, why
    assert Kumod().native and Kumod().native_why == ""


TRICKY = [b"", b"\x00", b"a\x00b", b"\x00" * 64, b"\xff\xfe\x80", b"\xed\xa0\x80", b"\xc0\xaf",
          "\u00e9\u4e2d\U0001f600".encode(), b"user@example.net", b"@example.net",
          *(b"x" * n for n in (55, 56, 57, 63, 64, 65, 119, 120, 128)), bytes(range(256)) * 4099]


def test_sha256_of_any_bytes_equals_hashlib(k):
    """The digest of a Lua string is of its raw bytes: NUL, bytes that are not UTF-8,
    every padding boundary, a 1 MB string."""
    for algo in ("sha256", "sha1", "sha512"):
        hex_of = k.eval(f"function(s) return require('kumo').digest.{algo}(s).hex end")
        for data in TRICKY:
            assert hex_of(data) == hashlib.new(algo, data).hexdigest(), (algo, data[:20], len(data))


def test_a_digest_is_a_binary_result_userdata(k):
    data = b"\xffuser\x00@example.net"
    raw = hashlib.sha256(data).digest()
    d = k.eval("require('kumo').digest.sha256")(data)
    field = k.eval("function(d, name) return d[name] end")
    assert k.eval("function(d) return type(d), tostring(d) end")(d) == ("userdata", raw.hex())
    assert field(d, "hex") == raw.hex()
    assert k.eval("function(d, hex) return d.bytes == (hex:gsub('..', function(x) "
                  "return string.char(tonumber(x, 16)) end)) end")(d, raw.hex()) is True
    assert field(d, "base64") == base64.b64encode(raw).decode()
    assert field(d, "base64url_nopad") == base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert field(d, "base32hex") == base64.b32hexencode(raw).decode()
    ok, err = k.pcall(field, d, "nope")
    assert not ok and "unknown field 'nope'" in err
    with pytest.raises(LuaError, match="concatenate"):
        k.eval("'x' .. require('kumo').digest.sha256('a')")
    assert k.eval("function(a, b) local d = require('kumo').digest.sha256 "
                  "return d(a) ~= d(a) and d(a).hex == d(b).hex end")("k", "k") is True
    # several arguments (or a value that is not a string) are digested as their concatenation
    assert k.eval("require('kumo').digest.sha256('ab', 'c').hex") == hashlib.sha256(b"abc").hexdigest()
    assert k.eval("require('kumo').digest.sha256(1).hex") == hashlib.sha256(b"1").hexdigest()


def test_native_and_python_digests_agree():
    if native_library()[0] is None:
        pytest.skip(f"no native part: {native_library()[1]}")
    code = """function(...) local d = require('kumo').digest.sha256(...)
      return tostring(d), d.hex, d.base64, d.base32_nopad end"""
    native, python = Kumod(native=True), Kumod(native=False)
    for args in (("a",), ("a", "b"), ({"x": 1, "y": [1, 2]},), (12.5,), (True, "x"), (), (None,),
                 ("a", None), (b"\xff", b"\x00")):
        a = native.eval(code)(*map(native.to_lua, args))
        assert a == python.eval(code)(*map(python.to_lua, args)), args


def test_native_sha256_block_functions_both_equal_hashlib():
    """The block function in SHA extension instructions (where the CPU has them) and the
    portable one."""
    if native_library()[0] is None:
        pytest.skip(f"no native part: {native_library()[1]}")
    lua = kumo_standin.lua54.LuaRuntime()
    mod, why = kumo_standin._open_native(lua, native_library()[0])
    assert mod.sha256_block in ("sha-ni", "portable")
    for data in TRICKY + [bytes(range(i)) for i in range(200)]:
        assert mod.sha256_hex(data) == mod.sha256_hex_portable(data) == hashlib.sha256(data).hexdigest()
    # a native BinaryResult's __index and __tostring refuse anything else
    k = Kumod(native=True)
    mt = k.eval("getmetatable(require('kumo').digest.sha256('a'))")
    for name in ("__index", "__tostring"):
        ok, err = k.pcall(mt[name], k.eval("{}"), "hex")
        assert not ok and "BinaryResult expected" in err


def test_without_the_native_part_the_python_fallback_is_used(monkeypatch):
    monkeypatch.setattr(kumo_standin, "native_library", lambda: (None, "no C compiler (gcc) on PATH"))
    k = Kumod()
    assert not k.native and "no C compiler" in k.native_why
    assert k.eval("require('kumo').digest.sha256('a').hex") == hashlib.sha256(b"a").hexdigest()
    with pytest.raises(RuntimeError, match="no C compiler"):
        Kumod(native=True)


def test_native_build_fails_cleanly_without_a_working_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert build_native(tmp_path) == (None, "no C compiler (gcc) on PATH")
    monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
    lib, why = build_native(tmp_path)
    assert lib is None and "failed" in why
    assert list(tmp_path.iterdir()) == []     # no temp file left behind


def test_concurrent_native_builds_leave_one_whole_library(tmp_path):
    if not shutil.which(os.environ.get("CC") or "gcc"):
        pytest.skip("no C compiler")
    results = []
    threads = [threading.Thread(target=lambda: results.append(build_native(tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r for r in results}) == 1 and results[0][0] is not None, results
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(results[0][0])]
    lua = kumo_standin.lua54.LuaRuntime()
    mod, why = kumo_standin._open_native(lua, results[0][0])
    assert why == "" and mod.sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
