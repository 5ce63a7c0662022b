// Comparing a shadow call with the call the client got: same status code,
// and for unary calls the same response bytes. Bytes that differ are decoded
// and compared as messages before calling it a mismatch, since protobuf does
// not fix the order of map entries on the wire.
import { equals, fromBinary, type DescMessage } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";

export type ShadowOutcome =
  /** Same status (and, for unary, same response). */
  | "match"
  | "status_mismatch"
  | "body_mismatch"
  /** The shadow call ran out of its own deadline. */
  | "timeout"
  /** Not sent: the upstream's shadow calls were at their concurrency bound. */
  | "dropped"
  /** Sampled but not sent: the method is not idempotent and the config does not allow it. */
  | "unsafe_skipped";

/**
 * The outcome of a finished shadow call (codes are gRPC status numbers, 0 = OK). `sameBody` is asked only when both
 * calls succeeded and there are bodies to compare (unary calls).
 */
export function classifyShadow(
  primaryCode: number,
  shadowCode: number,
  shadowTimedOut: boolean,
  sameBody?: () => boolean,
): ShadowOutcome {
  if (shadowTimedOut && (shadowCode === Code.DeadlineExceeded || shadowCode === Code.Canceled)) return "timeout";
  if (primaryCode !== shadowCode) return "status_mismatch";
  if (primaryCode === 0 && sameBody && !sameBody()) return "body_mismatch";
  return "match";
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Two encoded messages of `schema`: equal bytes, or equal once decoded. */
export function sameMessageBytes(schema: DescMessage, a: Uint8Array, b: Uint8Array): boolean {
  if (bytesEqual(a, b)) return true;
  try {
    return equals(schema, fromBinary(schema, a), fromBinary(schema, b));
  } catch {
    return false;
  }
}

export interface GrpcPayloads {
  readonly messages: Uint8Array[];
  readonly compressed: boolean;
  /** Bytes left over after the last whole frame (a truncated body). */
  readonly trailing: number;
}

/** Splits a gRPC body (length-prefixed messages) into its messages. */
export function grpcPayloads(body: Uint8Array): GrpcPayloads {
  const messages: Uint8Array[] = [];
  let compressed = false;
  let i = 0;
  while (i + 5 <= body.length) {
    const flag = body[i];
    const len = ((body[i + 1] << 24) | (body[i + 2] << 16) | (body[i + 3] << 8) | body[i + 4]) >>> 0;
    if (i + 5 + len > body.length) break;
    if (flag & 1) compressed = true;
    messages.push(body.subarray(i + 5, i + 5 + len));
    i += 5 + len;
  }
  return { messages, compressed, trailing: body.length - i };
}

/**
 * Two raw gRPC response bodies: the same messages. Compressed bodies are not
 * compared (the two servers may compress differently): judged equal.
 */
export function sameGrpcBodies(schema: DescMessage, a: Uint8Array, b: Uint8Array): boolean {
  if (bytesEqual(a, b)) return true;
  const pa = grpcPayloads(a);
  const pb = grpcPayloads(b);
  if (pa.compressed || pb.compressed) return true;
  if (pa.trailing || pb.trailing || pa.messages.length !== pb.messages.length) return false;
  return pa.messages.every((m, i) => sameMessageBytes(schema, m, pb.messages[i]));
}
