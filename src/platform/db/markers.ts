/**
 * Marks a statement the coalescing client may hold back until the transaction's next statement
 * (coalescing-client.ts): a write whose result nobody reads — a step's checkpoint, sent with the
 * commit, and the plain inserts a step makes while it runs (`holdingInserts`).
 */
export const DEFER_UNTIL_NEXT = '/* dealix:defer-until-next */ ';

/**
 * Marks a transaction's last statement: the caller promises that nothing follows it but the
 * transaction's `commit` (its transaction callback returns its result as it is, and nothing after it
 * can fail). Inside a transaction this client began (its `begin` came through it) the statement
 * travels with what is held AND the `commit`, and its own result is returned: one round trip for a
 * whole one-statement transaction (`begin; set_config; <statement>; commit`), or for a step's last
 * message (`<held inserts>; <statement>; commit`) when the transaction must read something back
 * from its last statement. Outside such a transaction the mark changes nothing. The commit that then
 * comes is answered here; so is a rollback, which has nothing left to undo, and any other statement
 * fails loudly instead of running outside the transaction. If the statement or the commit fails, the
 * transaction rolled back and the caller's rollback goes to PostgreSQL as usual. Used by
 * `DurableRuntime.start` (a run started outside a request) and by a run job's first step when it
 * runs without reading the run first (`DurableRuntime.checkpoint`'s `expect`).
 */
export const LAST_IN_TRANSACTION = '/* dealix:last-in-transaction */ ';
