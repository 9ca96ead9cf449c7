-- a schema-4 store as the schema-4 code wrote it (sqlite3 .dump), for tests/test_store.py
CREATE TABLE "counters" (
   "name" TEXT PRIMARY KEY,
   "value" INTEGER
);
INSERT INTO "counters" VALUES('removed_total',1);
INSERT INTO "counters" VALUES('records_total:Bounce',3);
CREATE TABLE "domains" (
   "domain" TEXT PRIMARY KEY,
   "generation" INTEGER
);
INSERT INTO "domains" VALUES('example.com',6);
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
, actor TEXT);
INSERT INTO "history" VALUES(1,1790000000,'add','example.com','u@example.net','bounce','log',1789740800,2105100800,NULL,NULL);
INSERT INTO "history" VALUES(2,1790000000,'refresh','example.com','u@example.net','bounce','log',1789913600,2105273600,NULL,NULL);
INSERT INTO "history" VALUES(3,1790000000,'add','example.com','gone@example.net','bounce','log',1789568000,2104928000,NULL,NULL);
INSERT INTO "history" VALUES(4,1790000000,'add','example.com','c@example.org','complaint','log',1789827200,NULL,NULL,NULL);
INSERT INTO "history" VALUES(5,1790000000,'add','example.com','x@example.net','expiration','log',1789827200,2105187200,NULL,NULL);
INSERT INTO "history" VALUES(6,1789913600,'remove','example.com','gone@example.net','bounce','manual',NULL,NULL,'asked',NULL);
INSERT INTO "history" VALUES(7,1790000000,'add','other.example','@bad.example','manual','manual',1790000000,NULL,'whole domain','cli');
CREATE TABLE seen_events (key INTEGER PRIMARY KEY, at INTEGER);
INSERT INTO "seen_events" VALUES(-2536780891127837260,2105273600);
INSERT INTO "seen_events" VALUES(1617923518444315844,NULL);
INSERT INTO "seen_events" VALUES(4807737980766343410,2105187200);
INSERT INTO "seen_events" VALUES(7085917401370976979,2104928000);
INSERT INTO "seen_events" VALUES(8896578799302194498,2105100800);
CREATE TABLE "segments" (dev INTEGER NOT NULL, ino INTEGER NOT NULL, fingerprint BLOB NOT NULL, fingerprint_len INTEGER NOT NULL, path TEXT, lines INTEGER, complete INTEGER, size INTEGER, updated_at INTEGER, PRIMARY KEY (dev, ino));
CREATE TABLE "state" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
);
INSERT INTO "state" VALUES('store_id','v4-store');
INSERT INTO "state" VALUES('last_ingest','1790000000');
CREATE TABLE strikes (key INTEGER PRIMARY KEY, domain TEXT, recipient TEXT, reason TEXT, at INTEGER, evidence TEXT);
CREATE TABLE suppressions (domain TEXT NOT NULL, recipient TEXT NOT NULL, reason TEXT NOT NULL, source TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, expires INTEGER, count INTEGER NOT NULL, ev_type TEXT, ev_message_id TEXT, ev_code INTEGER, ev_enhanced_code TEXT, ev_content TEXT, ev_classification TEXT, ev_nodeid TEXT, note TEXT, updated_at INTEGER, PRIMARY KEY (domain, recipient)) WITHOUT ROWID;
INSERT INTO "suppressions" VALUES('example.com','c@example.org','complaint','log',1789827200,1789827200,NULL,1,'Feedback','m4',250,NULL,'','Uncategorized','node-a',NULL,1790000000);
INSERT INTO "suppressions" VALUES('example.com','u@example.net','bounce','log',1789740800,1789913600,2105273600,2,'Bounce','m2',550,'5.1.1','newer','InvalidRecipient','node-a',NULL,1790000000);
INSERT INTO "suppressions" VALUES('example.com','x@example.net','expiration','log',1789827200,1789827200,2105187200,1,'Expiration','m5',551,'5.4.7','Next delivery time would exceed the expiry time','Uncategorized','node-a',NULL,1790000000);
INSERT INTO "suppressions" VALUES('other.example','@bad.example','manual','manual',1790000000,1790000000,NULL,1,'manual',NULL,NULL,NULL,NULL,NULL,NULL,'whole domain',1790000000);
CREATE TABLE tombstones (domain TEXT NOT NULL, recipient TEXT NOT NULL, removed_at INTEGER, note TEXT, PRIMARY KEY (domain, recipient)) WITHOUT ROWID;
INSERT INTO "tombstones" VALUES('example.com','gone@example.net',1789913600,'asked');
CREATE INDEX history_pair ON history(domain, recipient);
CREATE INDEX strikes_pair ON strikes(domain, recipient, at);
CREATE INDEX suppressions_recipient ON suppressions(recipient);
PRAGMA user_version=4;
