--[[
Example kumod policy (/opt/kumomta/etc/policy/init.lua) with kumo-suppression.

Copy suppression.lua next to this file (or anywhere on package.path), point `config` at
the same config.toml the `kumo-suppress` exporter uses, and adjust paths/listeners.

Order matters:
  1. suppression:new{} runs at the top level, when the policy loads (kumo.on may not be
     called from inside an event handler), and BEFORE the queue helper: both register a
     get_queue_config handler, they run in registration order, and the queue helper
     answers for every queue. suppression's handler answers only for its own queue
     (`suppressed.kumo_suppression`) and returns nothing for every other one.
  2. The queue helper (policy-extras.queue) after it.
  3. Your own message handlers call sup:check_smtp / sup:check_http AFTER the queue
     helper has applied its settings, so the module's `queue` meta (bounce/drop) wins.
]]
local kumo = require 'kumo'

-- (1) the suppression module: reads [policy], [keys] and [export] from the shared config
local suppression = require 'suppression'
local sup = suppression:new {
  config = '/etc/kumo-suppression/config.toml',
  -- Overrides win over the config file, e.g. during a rollout:
  -- smtp_action = 'shadow', http_action = 'shadow',
}

-- (2) the queue helper, AFTER suppression:new
local queue_module = require 'policy-extras.queue'
local queue_helper = queue_module:setup { '/opt/kumomta/etc/policy/queues.toml' }

kumo.on('init', function()
  kumo.define_spool {
    name = 'data',
    path = '/var/spool/kumomta/data',
    kind = 'RocksDB',
  }
  kumo.define_spool {
    name = 'meta',
    path = '/var/spool/kumomta/meta',
    kind = 'RocksDB',
  }

  -- The exporter ingests these logs. Segments are closed (made read-only) after a
  -- minute so new bounces reach the suppression list quickly. Logging the meta the
  -- module stamps tells the exporter which sending domain each record belongs to,
  -- without a spool read per event (which logging headers would cost).
  kumo.configure_local_logs {
    log_dir = '/var/log/kumomta',
    max_segment_duration = '1 minute',
    meta = { 'x_suppression_domain' },
    -- only needed if some records lack the meta (e.g. mail injected before rollout)
    -- and [keys].sending_domain = "from_header":
    -- headers = { 'From' },
  }

  kumo.start_esmtp_listener {
    listen = '0.0.0.0:25',
    relay_hosts = { '127.0.0.1', '10.0.0.0/8' },
  }

  kumo.start_http_listener {
    listen = '127.0.0.1:8000',
  }
end)

-- (3) per-message policy: the queue helper first, then the suppression check.
-- SMTP defaults to the `bounce` action: the message is accepted and bounced from the
-- module's own queue, because a kumo.reject here would reject the WHOLE transaction
-- (every recipient of it), not just the suppressed one.
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  queue_helper:apply(msg)
  sup:check_smtp(msg, conn_meta)
end)

-- HTTP injection defaults to `reject`: the injector gets a failed recipient with the
-- reason ("5.7.1 recipient suppressed for example.com: bounce since 2026-11-20").
kumo.on('http_message_generated', function(msg)
  queue_helper:apply(msg)
  sup:check_http(msg)
end)

-- Optional, with [keys].sending_domain = "sender" only: refuse suppressed recipients
-- at RCPT TO, before DATA (rejects just that recipient).
-- kumo.on('smtp_server_mail_from', function(sender, conn_meta)
--   sup:mail_from(sender, conn_meta)
-- end)
-- kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta)
--   sup:rcpt_to(rcpt, conn_meta)
-- end)

-- The suppression queue needs no entry in queues.toml, but it does need a shaping entry:
-- the shaping helper's defaults (connection limits and rates meant for real MX hosts)
-- apply to it too and would hold diverted messages back. Add to your shaping TOML:
--   ['suppressed.kumo_suppression']
--   mx_rollup = false
--   connection_limit = 100
--   max_deliveries_per_connection = 100000
--   max_connection_rate = "1000/s"
