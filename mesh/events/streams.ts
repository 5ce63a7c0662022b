// Creating (or updating) the streams at start.
import { DiscardPolicy, nanos, RetentionPolicy, StorageType, type JetStreamManager, type StreamConfig, type StreamInfo } from "nats";
import { deadLetterStream, type StreamSpec } from "./naming.js";

/** JetStream's Nats-Msg-Id dedupe window on our streams unless told otherwise. */
export const DEFAULT_DUPLICATE_WINDOW_MS = 120_000;

export interface EnsureStreamsOptions {
  /** Subject prefix; also decides the dead-letter stream's name. */
  prefix?: string;
  /** Nats-Msg-Id dedupe window. Must outlast a relay's longest retry of one row. Default 2 minutes. */
  duplicateWindowMs?: number;
  /** Also ensure `${PREFIX}DEAD_LETTERS`. Default true. */
  deadLetters?: boolean;
  /** Cluster replicas (3 on a JetStream cluster). Default 1. */
  replicas?: number;
  /** Drop events older than this. Default: keep (limited only by the server). */
  maxAgeMs?: number;
  /** Memory storage for throwaway test streams. Default file. */
  storage?: "file" | "memory";
}

/**
 * Creates each stream, or updates its subjects and settings if it exists (idempotent:
 * every replica of every service may call it at start). Returns the resulting infos.
 */
export async function ensureStreams(
  jsm: JetStreamManager,
  streams: StreamSpec[],
  opts: EnsureStreamsOptions = {},
): Promise<StreamInfo[]> {
  const all = [...streams];
  if (opts.deadLetters !== false) all.push(deadLetterStream(opts.prefix ?? ""));
  const infos: StreamInfo[] = [];
  for (const spec of dedupeByName(all)) {
    infos.push(await ensureStream(jsm, spec, opts));
  }
  return infos;
}

async function ensureStream(jsm: JetStreamManager, spec: StreamSpec, opts: EnsureStreamsOptions): Promise<StreamInfo> {
  const cfg: Partial<StreamConfig> = {
    name: spec.name,
    subjects: spec.subjects,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    storage: opts.storage === "memory" ? StorageType.Memory : StorageType.File,
    num_replicas: opts.replicas ?? 1,
    duplicate_window: nanos(opts.duplicateWindowMs ?? DEFAULT_DUPLICATE_WINDOW_MS),
    max_age: opts.maxAgeMs ? nanos(opts.maxAgeMs) : 0,
  };
  let existing: StreamInfo | undefined;
  try {
    existing = await jsm.streams.info(spec.name);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  if (!existing) {
    try {
      return await jsm.streams.add(cfg);
    } catch (err) {
      // Another replica created it between our info and add: fall through to update.
      if (!/already in use|already exists/i.test(String((err as Error).message))) throw err;
    }
  }
  // storage cannot change on an existing stream; everything else here may.
  const { storage: _storage, name: _name, ...update } = cfg;
  return jsm.streams.update(spec.name, update);
}

function dedupeByName(specs: StreamSpec[]): StreamSpec[] {
  const byName = new Map<string, StreamSpec>();
  for (const s of specs) {
    const seen = byName.get(s.name);
    byName.set(s.name, seen ? { name: s.name, subjects: [...new Set([...seen.subjects, ...s.subjects])] } : s);
  }
  return [...byName.values()];
}

export function isNotFound(err: unknown): boolean {
  const e = err as { code?: string | number; api_error?: { err_code?: number }; message?: string };
  return e?.api_error?.err_code === 10059 || e?.api_error?.err_code === 10014 || e?.code === "404" || /not found/i.test(e?.message ?? "");
}
