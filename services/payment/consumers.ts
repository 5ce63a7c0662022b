/**
 * The events the payment context reacts to: none.
 *
 * Payments are driven by the order saga over RPC (AuthorizePayment,
 * CapturePayment, RefundPayment), each keyed by the order id; the inbox table
 * exists in schema.ts so a future consumer needs no migration of its own.
 */
export {};
