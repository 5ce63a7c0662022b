// A span exporter that appends one JSON line per finished span to a file of this process.
// For end-to-end tests and local debugging without a collector: every process of a test
// writes into one directory (OTEL_TRACES_FILE_DIR) and the test reads the whole trace back.
import { appendFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { ExportResultCode, type ExportResult } from "@opentelemetry/core";
import type { ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace-base";

/** What one line holds: enough to rebuild the tree and read the RPC / messaging attributes. */
export interface SpanLine {
  service: string;
  name: string;
  kind: number;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  startMs: number;
  durationMs: number;
  status: number;
  attributes: Record<string, unknown>;
}

export class JsonLinesSpanExporter implements SpanExporter {
  private readonly file: string;

  constructor(dir: string, service: string) {
    mkdirSync(dir, { recursive: true });
    this.file = join(dir, `${service}-${process.pid}.jsonl`);
  }

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    try {
      const text = spans
        .map((s) => {
          const line: SpanLine = {
            service: String(s.resource.attributes["service.name"] ?? ""),
            name: s.name,
            kind: s.kind,
            traceId: s.spanContext().traceId,
            spanId: s.spanContext().spanId,
            parentSpanId: s.parentSpanContext?.spanId,
            startMs: s.startTime[0] * 1000 + s.startTime[1] / 1e6,
            durationMs: s.duration[0] * 1000 + s.duration[1] / 1e6,
            status: s.status.code,
            attributes: s.attributes,
          };
          return JSON.stringify(line) + "\n";
        })
        .join("");
      appendFileSync(this.file, text);
      done({ code: ExportResultCode.SUCCESS });
    } catch (error) {
      done({ code: ExportResultCode.FAILED, error: error as Error });
    }
  }

  async shutdown(): Promise<void> {}
}
