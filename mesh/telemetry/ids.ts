// Trace and span ids: lowercase hex cut from a pool that the CSPRNG fills 4 KiB at a time.
//
// Why not the SDK's RandomIdGenerator: it writes Math.random() into a buffer and hex-encodes
// it natively on every id, about a third of what a CLIENT span cost a mesh call
// (bench/telemetry-overhead.ts, PROFILE_DIR). Here an id is a slice of one long hex string,
// and the pool is refilled after 256 trace ids or 512 span ids. The ids are also
// unpredictable, which Math.random's are not.
import { randomBytes } from "node:crypto";
import type { IdGenerator } from "@opentelemetry/sdk-trace-base";

const POOL_BYTES = 4096;
/** W3C Trace Context: an id of all zeros is invalid. */
const ALL_ZEROS: Record<number, string> = { 16: "0".repeat(16), 32: "0".repeat(32) };

export class IdPool implements IdGenerator {
  private hex = "";
  private next = 0;

  /** 16 random bytes as 32 hex digits. */
  generateTraceId(): string {
    return this.take(32);
  }

  /** 8 random bytes as 16 hex digits. */
  generateSpanId(): string {
    return this.take(16);
  }

  private take(digits: number): string {
    if (this.next + digits > this.hex.length) {
      this.hex = randomBytes(POOL_BYTES).toString("hex");
      this.next = 0;
    }
    const id = this.hex.slice(this.next, (this.next += digits));
    return id === ALL_ZEROS[digits] ? this.take(digits) : id;
  }
}
