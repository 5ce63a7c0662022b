/**
 * The card processor behind PaymentService, as an interface, and the
 * simulated one the shop runs on. The simulation is deterministic and
 * answers by card token and amount alone:
 *
 *   token          authorize answers
 *   tok_visa       approved
 *   tok_declined   declined, "card declined"
 *   tok_slow       approved, after PAYMENT_SLOW_MS (default 3 s; cut short by the call's abort signal)
 *   tok_error      throws UNAVAILABLE ("processor unavailable"): nothing is recorded, a retry may succeed
 *   anything else  declined, "unknown card token"
 *   any token, amount over 1 000 000 minor units: declined, "amount over limit" (checked first)
 *
 * capture, void and refund always succeed (the authorization they act on
 * was approved by this same processor).
 *
 * Like a real processor (Stripe's Idempotency-Key, Adyen's reference), every
 * call carries an idempotency key (the order id), so a call repeated after a
 * lost answer acts once at the processor. The simulation keeps no state, so
 * it honours that trivially.
 */
import { unavailable } from '../../mesh/errors.js';

/** Amounts above this (in minor units) are declined. */
export const AMOUNT_LIMIT_MINOR = 1_000_000n;

export const TEST_TOKENS = {
  approve: 'tok_visa',
  decline: 'tok_declined',
  slow: 'tok_slow',
  error: 'tok_error',
} as const;

export interface AuthorizeRequest {
  /** The order id. */
  idempotencyKey: string;
  cardToken: string;
  amountMinor: bigint;
  currencyCode: string;
}

export type AuthorizeResult =
  | { approved: true; authorizationCode: string }
  | { approved: false; declineReason: string };

export interface CardProcessor {
  /** Holds the amount on the card; a decline is an answer, an outage throws UNAVAILABLE. */
  authorize(req: AuthorizeRequest, signal?: AbortSignal): Promise<AuthorizeResult>;
  /** Charges a held amount. */
  capture(idempotencyKey: string, authorizationCode: string): Promise<void>;
  /** Releases a hold that was never charged. */
  void(idempotencyKey: string, authorizationCode: string): Promise<void>;
  /** Gives a charged amount back. */
  refund(idempotencyKey: string, authorizationCode: string, amountMinor: bigint): Promise<void>;
}

export interface SimulatedProcessorOptions {
  /** How long tok_slow takes (PAYMENT_SLOW_MS). */
  slowMs: number;
}

export class SimulatedProcessor implements CardProcessor {
  constructor(private readonly options: SimulatedProcessorOptions) {}

  async authorize(req: AuthorizeRequest, signal?: AbortSignal): Promise<AuthorizeResult> {
    if (req.amountMinor > AMOUNT_LIMIT_MINOR) return { approved: false, declineReason: 'amount over limit' };
    switch (req.cardToken) {
      case TEST_TOKENS.approve:
        return { approved: true, authorizationCode: authorizationCode(req.idempotencyKey) };
      case TEST_TOKENS.decline:
        return { approved: false, declineReason: 'card declined' };
      case TEST_TOKENS.slow:
        await sleep(this.options.slowMs, signal);
        return { approved: true, authorizationCode: authorizationCode(req.idempotencyKey) };
      case TEST_TOKENS.error:
        throw unavailable('processor unavailable', 1000);
      default:
        return { approved: false, declineReason: 'unknown card token' };
    }
  }

  async capture(): Promise<void> {}

  async void(): Promise<void> {}

  async refund(): Promise<void> {}
}

/** Same key, same code: a repeated authorization is recognisably the same one. */
function authorizationCode(idempotencyKey: string): string {
  let h = 0x811c9dc5;
  for (const c of idempotencyKey) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return `sim_${h.toString(16).padStart(8, '0')}`;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
