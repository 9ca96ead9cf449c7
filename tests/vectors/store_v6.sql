-- a schema-6 store as the schema-6 code wrote it (sqlite3 .dump), for tests/test_store.py
CREATE TABLE "counters" (
   "name" TEXT PRIMARY KEY,
   "value" INTEGER
);
INSERT INTO "counters" VALUES('removed_total',1);
CREATE TABLE "domains" (
   "domain" TEXT PRIMARY KEY,
   "generation" INTEGER
);
INSERT INTO "domains" VALUES('example.com',7);
INSERT INTO "domains" VALUES('other.example',1);
CREATE TABLE export_files (directory TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (directory, name));
CREATE TABLE "history" (
   "id" INTEGER PRIMARY KEY,
   "at" INTEGER,
   "action" TEXT,
   "domain" TEXT,
   "recipient" TEXT,
   "reason" TEXT,
   "source" TEXT,
   "event_time" INTEGER,
   "expires" INTEGER,
   "note" TEXT
, actor TEXT, indexed INTEGER DEFAULT 1);
INSERT INTO "history" VALUES(1,1790000000,'add','example.com','u@example.net','bounce','log',1789740800,2105100800,NULL,NULL,NULL);
INSERT INTO "history" VALUES(2,1790000000,'refresh','example.com','u@example.net','bounce','log',1789913600,2105273600,NULL,NULL,1);
INSERT INTO "history" VALUES(3,1790000000,'add','example.com','gone@example.net','bounce','log',1789654400,2105014400,NULL,NULL,1);
INSERT INTO "history" VALUES(4,1789827200,'remove','example.com','gone@example.net','bounce','manual',NULL,NULL,'asked',NULL,1);
INSERT INTO "history" VALUES(5,1790000000,'add','example.com','x@example.net','expiration','log',1789827200,2105187200,NULL,NULL,NULL);
INSERT INTO "history" VALUES(6,1789913600,'add','other.example','@bad.example','manual','manual',1789913600,NULL,'whole domain','cli',NULL);
INSERT INTO "history" VALUES(7,1781360000,'add','example.com','m@example.net','manual','manual',1781360000,1783952000,'',NULL,NULL);
INSERT INTO "history" VALUES(8,1790000000,'add','example.com','o@example.org','oob','log',1789913600,1821449600,NULL,NULL,NULL);
CREATE TABLE seen_events (key INTEGER PRIMARY KEY, at INTEGER);
INSERT INTO "seen_events" VALUES(-2453388456466231534,2105014400);
INSERT INTO "seen_events" VALUES(8896578799302194498,2105100800);
CREATE TABLE "segments" (dev INTEGER NOT NULL, ino INTEGER NOT NULL, fingerprint BLOB NOT NULL, fingerprint_len INTEGER NOT NULL, path TEXT, lines INTEGER, complete INTEGER, size INTEGER, updated_at INTEGER, PRIMARY KEY (dev, ino));
CREATE TABLE "state" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
);
INSERT INTO "state" VALUES('store_id','v6-store');
CREATE TABLE strikes (key INTEGER PRIMARY KEY, domain TEXT, recipient TEXT, reason TEXT, at INTEGER, evidence TEXT);
CREATE TABLE suppressions (domain TEXT NOT NULL, recipient TEXT NOT NULL, reason TEXT NOT NULL, source TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, expires INTEGER, count INTEGER NOT NULL, ev_type TEXT, ev_message_id TEXT, ev_code INTEGER, ev_enhanced_code TEXT, ev_content TEXT, ev_classification TEXT, ev_nodeid TEXT, note TEXT, updated_at INTEGER, added INTEGER, PRIMARY KEY (domain, recipient)) WITHOUT ROWID;
INSERT INTO "suppressions" VALUES('example.com','m@example.net','manual','manual',1781360000,1781360000,1783952000,1,X'06',NULL,NULL,NULL,NULL,NULL,NULL,'',1781360000,7);
INSERT INTO "suppressions" VALUES('example.com','o@example.org','oob','log',1789913600,1789913600,1821449600,1,X'02','m5',550,'5.1.1','5.1.1 user unknown',X'0B',X'0B5E1B4E9A5511EE8C900242AC120002',NULL,1790000000,8);
INSERT INTO "suppressions" VALUES('example.com','u@example.net','bounce','log',1789740800,1789913600,2105273600,2,X'01','m2',550,'5.1.1','newer',X'0C',X'0B5E1B4E9A5511EE8C900242AC120002',NULL,1790000000,1);
INSERT INTO "suppressions" VALUES('example.com','x@example.net','expiration','log',1789827200,1789827200,2105187200,1,X'03',X'481D436455B14415A32C6FB9198420C4',551,'5.4.7','Next delivery time would exceed the expiry time',X'0B',X'0B5E1B4E9A5511EE8C900242AC120002',NULL,1790000000,5);
INSERT INTO "suppressions" VALUES('other.example','@bad.example','manual','manual',1789913600,1789913600,NULL,1,X'06',NULL,NULL,NULL,NULL,NULL,NULL,'whole domain',1789913600,6);
CREATE TABLE tombstones (domain TEXT NOT NULL, recipient TEXT NOT NULL, removed_at INTEGER, note TEXT, PRIMARY KEY (domain, recipient)) WITHOUT ROWID;
INSERT INTO "tombstones" VALUES('example.com','gone@example.net',1789827200,'asked');
CREATE INDEX strikes_pair ON strikes(domain, recipient, at);
CREATE INDEX history_pair ON history(domain, recipient) WHERE indexed;
PRAGMA user_version=6;
