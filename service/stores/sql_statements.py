"""The write path's SQL and the API's account reads, written once, in the `:name` parameter style.

These are the statements the lock modes are made of, and the reads of whole
accounts a GET, a transfer and a read-modify-write's read run on every
request; `SqlStore.sql` rewrites the parameters for psycopg. Only `fenced` touches the `fence`
column: the other modes' statements neither read nor write it. Every write
of a balance bumps the version (optimistic and fenced writes compare it) and
returns the balance it wrote, which the journal entry records as
`balance_after`.
"""

from __future__ import annotations

import functools

# The exclusive lock of `locked` on PostgreSQL; it reads what it locks.
LOCK_ROW = "SELECT balance, version FROM accounts WHERE id = :id FOR UPDATE"

READ_STATE = "SELECT balance, version FROM accounts WHERE id = :id"

# PostgreSQL: queue behind whoever writes the account, before a statement that
# must see what they committed (see ADD_TO_AVAILABLE). NO KEY UPDATE is the
# lock an UPDATE of the row takes itself: it waits for every writer but not for
# the foreign-key checks (KEY SHARE) of transfers and journal entries naming
# the account, which FOR UPDATE would queue behind -- and deadlock with.
LOCK_ROW_FOR_WRITE = "SELECT balance FROM accounts WHERE id = :id FOR NO KEY UPDATE"

# A read-modify-write's read without a lock: the balance, the version and the
# held money (pending holds not yet expired) in one statement, one snapshot.
READ_STATE_AND_HELD = (
    "SELECT balance, version, (SELECT COALESCE(SUM(amount), 0) FROM holds"
    " WHERE account_id = :id AND status = 'pending' AND expires_at > :now)"
    " FROM accounts WHERE id = :id"
)

# Why a fenced claim or write was refused: the token the account holds.
READ_FENCE = "SELECT fence FROM accounts WHERE id = :id"

# A read-modify-write's last step: write what was computed from the read.
SET_BALANCE = (
    "UPDATE accounts SET balance = :new_balance, version = version + 1, updated_at = :updated_at"
    " WHERE id = :id RETURNING balance"
)

# Optimistic: the same write, only if nobody wrote since the read.
SET_BALANCE_IF_VERSION = (
    "UPDATE accounts SET balance = :new_balance, version = version + 1, updated_at = :updated_at"
    " WHERE id = :id AND version = :expected_version RETURNING balance"
)

# Fenced: record the lock's fencing token on the account, only if it is newer
# than the last one recorded, and read what the write will start from.
CLAIM_FENCE = (
    "UPDATE accounts SET fence = :fence WHERE id = :id AND fence < :fence"
    " RETURNING balance, version"
)

# Fenced: the read-modify-write's write, only if no newer token claimed the
# account since and nothing was written since the claim's read: the other
# modes never touch the fence, so only the version shows that a worker still
# serving (or already serving) another mode wrote in between.
SET_BALANCE_IF_FENCE = (
    "UPDATE accounts SET balance = :new_balance, version = version + 1, updated_at = :updated_at"
    " WHERE id = :id AND fence = :fence AND version = :expected_version RETURNING balance"
)

# Atomic: the database does the arithmetic and the range check in one statement.
ADD_TO_BALANCE = (
    "UPDATE accounts SET balance = balance + :delta, version = version + 1,"
    " updated_at = :updated_at"
    " WHERE id = :id AND balance + :delta >= 0 AND balance + :delta <= :max_balance"
    " RETURNING balance"
)

# Atomic, for a leg that lowers the available money (a debit, a new hold):
# the guard is the available money, `balance - held`, with `held` summed in
# the statement. On PostgreSQL the row is locked first (LOCK_ROW_FOR_WRITE): an UPDATE
# that waited for a row re-checks its WHERE on the newest row but not the
# subquery's snapshot, which would miss a hold committed meanwhile; after
# the lock, this statement's fresh snapshot sees every committed hold (each
# was inserted under the same row lock).
ADD_TO_AVAILABLE = (
    "UPDATE accounts SET balance = balance + :delta, version = version + 1,"
    " updated_at = :updated_at"
    " WHERE id = :id AND balance + :delta <= :max_balance"
    " AND balance + :delta - :reserve >= (SELECT COALESCE(SUM(amount), 0) FROM holds"
    " WHERE account_id = :id AND status = 'pending' AND expires_at > :now)"
    " RETURNING balance"
)

INSERT_TRANSACTION = (
    "INSERT INTO transactions"
    " (account_id, kind, amount, balance_after, transfer_id, lock_mode, created_at, hold_id)"
    " VALUES (:account_id, :kind, :amount, :balance_after, :transfer_id, :lock_mode,"
    " :created_at, :hold_id)"
    " RETURNING id"
)

INSERT_TRANSFER = (
    "INSERT INTO transfers (from_account, to_account, amount, lock_mode, created_at)"
    " VALUES (:from_account, :to_account, :amount, :lock_mode, :created_at) RETURNING id"
)

INSERT_ACCOUNT = (
    "INSERT INTO accounts (owner, currency, balance, version, created_at, updated_at)"
    " VALUES (:owner, :currency, :balance, 0, :created_at, :created_at) RETURNING id"
)

LOAD_MODE = "SELECT lock_mode, race_window_ms FROM settings WHERE id = :id"

# ---------------------------------------------------------------- the API's reads
# Whole accounts with their held money summed in the same statement. Each read
# is one statement, its own snapshot, so it runs outside any transaction
# (`SqlStore._read`): no BEGIN, no COMMIT.
ACCOUNTS_WITH_HELD = (
    "SELECT id, owner, currency, balance, version, created_at, updated_at,"
    " (SELECT COALESCE(SUM(holds.amount), 0) FROM holds WHERE holds.account_id = accounts.id"
    " AND holds.status = 'pending' AND holds.expires_at > :now)"
    " FROM accounts"
)
READ_ACCOUNT = ACCOUNTS_WITH_HELD + " WHERE id = :id"
LIST_ACCOUNTS = ACCOUNTS_WITH_HELD + " WHERE id > :after ORDER BY id LIMIT :limit"


def id_parameter(position: int) -> str:
    """The name of the `position`th id of `read_accounts` (letters: `:name` takes no digits)."""
    return "id_" + "".join(chr(ord("a") + int(digit)) for digit in str(position))


@functools.lru_cache(maxsize=128)
def read_accounts(count: int) -> str:
    """Several accounts by id in one statement, the ids named by `id_parameter`."""
    names = ", ".join(":" + id_parameter(position) for position in range(count))
    return f"{ACCOUNTS_WITH_HELD} WHERE id IN ({names})"


# ---------------------------------------------------------------- idempotency keys
# One statement claims a key: a new key, an expired one, or a claim whose
# request died (same request, older than the lease) becomes this request's;
# otherwise nothing changes and no row is returned.
CLAIM_KEY = (
    "INSERT INTO idempotency_keys"
    " (scope, idempotency_key, fingerprint, state, owner, claimed_at, expires_at)"
    " VALUES (:scope, :key, :fingerprint, 'in_progress', :owner, :now, :expires_at)"
    " ON CONFLICT (scope, idempotency_key) DO UPDATE SET"
    " fingerprint = excluded.fingerprint, state = 'in_progress', owner = excluded.owner,"
    " claimed_at = excluded.claimed_at, expires_at = excluded.expires_at,"
    " response_status = NULL, response_headers = NULL, response_body = NULL"
    " WHERE idempotency_keys.expires_at < :now"
    " OR (idempotency_keys.state = 'in_progress' AND idempotency_keys.claimed_at < :stale_before"
    " AND idempotency_keys.fingerprint = excluded.fingerprint)"
    " RETURNING owner"
)

READ_KEY = (
    "SELECT fingerprint, state, response_status, response_headers, response_body"
    " FROM idempotency_keys WHERE scope = :scope AND idempotency_key = :key"
)

# Only the attempt that still owns an in-progress claim may complete it.
COMPLETE_KEY = (
    "UPDATE idempotency_keys SET state = 'done', response_status = :status,"
    " response_headers = :headers, response_body = :body"
    " WHERE scope = :scope AND idempotency_key = :key AND owner = :owner"
    " AND state = 'in_progress'"
)

RELEASE_KEY = (
    "DELETE FROM idempotency_keys WHERE scope = :scope AND idempotency_key = :key"
    " AND owner = :owner AND state = 'in_progress'"
)

# A bounded batch, so the purge never holds the write lock for long.
PURGE_KEYS = (
    "DELETE FROM idempotency_keys WHERE (scope, idempotency_key) IN"
    " (SELECT scope, idempotency_key FROM idempotency_keys WHERE expires_at < :now LIMIT :limit)"
)


def journaled(balance_update: str) -> str:
    """PostgreSQL: a balance UPDATE and its journal entry as one statement (one round trip).

    If the UPDATE matches no row (refused, or a stale version), nothing is
    inserted and no row comes back, exactly as with the two statements.
    """
    return (
        f"WITH moved AS ({balance_update})"  # nosec B608  # balance_update: one of this module's constants
        " INSERT INTO transactions"
        " (account_id, kind, amount, balance_after, transfer_id, lock_mode, created_at, hold_id)"
        " SELECT CAST(:id AS BIGINT), CAST(:kind AS VARCHAR), CAST(:amount AS BIGINT), balance,"
        " CAST(:transfer_id AS BIGINT), CAST(:lock_mode AS VARCHAR), :created_at,"
        " CAST(:hold_id AS BIGINT) FROM moved"
        " RETURNING id, balance_after"
    )


JOURNALED = {
    update: journaled(update)
    for update in (
        SET_BALANCE,
        SET_BALANCE_IF_VERSION,
        SET_BALANCE_IF_FENCE,
        ADD_TO_BALANCE,
        ADD_TO_AVAILABLE,
    )
}
