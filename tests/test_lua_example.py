"""policy_lua/init.example.lua loads in the stand-in and works next to a queue helper
that, like policy-extras.queue, answers get_queue_config for every queue."""

from kumo_standin import FakeClock, Kumod
from lua_support import NOW, POLICY_DIR, QUEUE, entry, write_config, write_snapshot

QUEUE_HELPER_STUB = """
local kumo = require 'kumo'
local mod = {}
function mod:setup(files)
  kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
    return kumo.make_queue_config { egress_pool = 'helper-pool' }   -- every queue
  end)
  return { apply = function(self, msg) msg:set_meta('helper_applied', true) end }
end
return mod
"""


def test_example_policy(tmp_path):
    (tmp_path / "lib" / "policy-extras").mkdir(parents=True)
    (tmp_path / "lib" / "policy-extras" / "queue.lua").write_text(QUEUE_HELPER_STUB)
    write_snapshot(tmp_path / "snapshots", "example.com", {"user@example.net": entry()})
    cfg = write_config(tmp_path / "config.toml", export={"dir": "snapshots"})
    code = (POLICY_DIR / "init.example.lua").read_text()
    assert "/etc/kumo-suppression/config.toml" in code
    code = code.replace("/etc/kumo-suppression/config.toml", str(cfg))
    k = Kumod(POLICY_DIR, clock=FakeClock(NOW), extra_paths=[tmp_path / "lib"])
    k.execute(code, "=init.lua")
    assert k.handler_count("init") == 1 and k.handler_count("get_queue_config") == 2

    msg = k.make_message("b@example.com", ["user@example.net"], from_header="n@example.com")
    assert k.smtp_transaction([msg]).accepted
    assert msg.meta["helper_applied"] is True and msg.meta["queue"] == QUEUE
    out = k.deliver_via_queue(msg)
    assert out.kind == "Bounce" and out.code == 550, "own queue answered before the helper"

    clean = k.make_message("b@example.com", ["ok@example.net"], from_header="n@example.com")
    assert k.smtp_transaction([clean]).accepted
    assert k.deliver_via_queue(clean).kind == "Smtp", "other queues reach the helper"

    hit = k.make_message("b@example.com", ["user@example.net"], from_header="n@example.com")
    assert k.http_inject(hit).rejected
