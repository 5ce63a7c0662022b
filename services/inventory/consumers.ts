/**
 * The events the inventory context reacts to: none.
 *
 * Reservations are driven by the order saga over RPC (ReserveStock,
 * ReleaseReservation, CommitReservation), each keyed by the order id, so no
 * event is needed to keep stock right; a reservation the saga forgets is
 * released by the expiry sweeper (sweeper.ts). The inbox table exists in
 * schema.ts so a future consumer needs no migration of its own.
 */
export {};
