// The request headers as the pipeline reads them (get/has), looked up in
// place: copying every header into a fetch Headers object costs more than the
// few lookups a call makes. One small object per call, methods on the prototype.
import type { IncomingHttpHeaders } from "node:http";

class HeaderView {
  constructor(private readonly raw: IncomingHttpHeaders) {}
  get(name: string): string | null {
    const v = this.raw[name];
    return v === undefined ? null : Array.isArray(v) ? v.join(", ") : String(v);
  }
  has(name: string): boolean {
    return this.raw[name] !== undefined;
  }
}

/** A read-only Headers look-alike over Node's header object (lower-case names). */
export function headerView(raw: IncomingHttpHeaders): Headers {
  return new HeaderView(raw) as unknown as Headers;
}
