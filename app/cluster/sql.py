"""The cluster's statements (tables: app/store/pg_schema.py, migration 2)."""

REGISTER = ("INSERT INTO nodes (node_id, expires_at) "
            "VALUES ($1, now() + make_interval(secs => $2))")
# Renew only a lease that was not taken: 0 rows means this node was declared dead (fenced).
HEARTBEAT = ("UPDATE nodes SET expires_at = now() + make_interval(secs => $2) "
             "WHERE node_id = $1 AND NOT dead RETURNING node_id")
# One statement, one transaction: nodes whose lease ran out are declared dead and their
# conversations move to the reaping node, which must itself hold a valid lease. Row locks
# make every dead node reaped exactly once across the cluster.
REAP = """
WITH me AS (
    SELECT 1 FROM nodes WHERE node_id = $1 AND NOT dead AND expires_at > now()
), dead AS (
    UPDATE nodes SET dead = true
    WHERE NOT dead AND expires_at < now() AND node_id <> $1 AND EXISTS (SELECT 1 FROM me)
    RETURNING node_id
)
UPDATE conversation_owners SET node_id = $1
WHERE node_id IN (SELECT node_id FROM dead)
RETURNING conversation_id
"""
REAPED_NODES = "SELECT count(*) FROM nodes WHERE dead"
# Claim a conversation nobody alive owns (new, or its owner row names a dead/unknown node).
CLAIM = """
INSERT INTO conversation_owners AS o (conversation_id, node_id) VALUES ($1, $2)
ON CONFLICT (conversation_id) DO UPDATE SET node_id = EXCLUDED.node_id
WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = o.node_id AND NOT n.dead)
RETURNING node_id
"""
OWNER = "SELECT node_id FROM conversation_owners WHERE conversation_id = $1"
LIVE_OWNER = ("SELECT o.node_id FROM conversation_owners o JOIN nodes n USING (node_id) "
              "WHERE o.conversation_id = $1 AND NOT n.dead")
# A clean stop: hand every conversation back (its runs ended first) and leave.
RELEASE = "DELETE FROM conversation_owners WHERE node_id = $1"
LEAVE = "UPDATE nodes SET dead = true WHERE node_id = $1"
FORGET_OLD_NODES = "DELETE FROM nodes WHERE dead AND expires_at < now() - interval '1 day'"
