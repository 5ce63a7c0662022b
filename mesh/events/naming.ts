// Subject and stream names, derived from protobuf type names and the subject prefix.
//
// Subject = `${prefix}${fullTypeName}` (e.g. `shop.order.v1.OrderPlaced`). One stream per
// protobuf package without its version: package `shop.order.v1` -> stream `SHOP_ORDER`
// covering `shop.order.v1.>`. The prefix is empty in production and unique per test run
// (e.g. `t3f9a.`); stream names cannot hold dots, so the stream prefix is the subject
// prefix upper-cased with non-alphanumerics turned into `_` (`T3F9A_`).

export interface StreamSpec {
  name: string;
  subjects: string[];
}

/** The subject prefix from NATS_SUBJECT_PREFIX (normalised to end with a dot when set). */
export function subjectPrefixFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  return normalizeSubjectPrefix(env.NATS_SUBJECT_PREFIX ?? "");
}

export function normalizeSubjectPrefix(prefix: string): string {
  if (prefix === "") return "";
  if (/[\s*>]/.test(prefix)) throw new Error(`subject prefix ${JSON.stringify(prefix)} holds a space or wildcard`);
  return prefix.endsWith(".") ? prefix : `${prefix}.`;
}

/** `t3f9a.` -> `T3F9A_`; empty stays empty. */
export function streamPrefix(subjectPrefix: string): string {
  if (subjectPrefix === "") return "";
  const name = subjectPrefix.replace(/\.$/, "").toUpperCase().replace(/[^A-Z0-9]+/g, "_");
  return `${name}_`;
}

export function eventSubject(typeName: string, prefix = ""): string {
  return `${prefix}${typeName}`;
}

/** `shop.order.v1.OrderPlaced` -> `shop.order.v1`. */
export function packageOf(typeName: string): string {
  const dot = typeName.lastIndexOf(".");
  if (dot <= 0) throw new Error(`event type ${JSON.stringify(typeName)} has no package`);
  return typeName.slice(0, dot);
}

/** The stream that holds every event of a protobuf package, e.g. `shop.order.v1`. */
export function packageStream(pkg: string, prefix = ""): StreamSpec {
  const parts = pkg.split(".").filter((p) => !/^v\d+((alpha|beta)\d*)?$/.test(p));
  if (parts.length === 0) throw new Error(`package ${JSON.stringify(pkg)} has no name besides its version`);
  return {
    name: `${streamPrefix(prefix)}${parts.join("_").toUpperCase().replace(/[^A-Z0-9_]/g, "_")}`,
    subjects: [`${prefix}${pkg}.>`],
  };
}

/** The stream that holds events of the given full type name. */
export function streamForType(typeName: string, prefix = ""): StreamSpec {
  return packageStream(packageOf(typeName), prefix);
}

export function deadLetterStream(prefix = ""): StreamSpec {
  return { name: `${streamPrefix(prefix)}DEAD_LETTERS`, subjects: [`${prefix}deadletter.>`] };
}

/** Dead letters of one consumer go to `${prefix}deadletter.<consumer>`. */
export function deadLetterSubject(consumer: string, prefix = ""): string {
  return `${prefix}deadletter.${consumer}`;
}

/** Durable names become subject tokens and NATS API subjects: keep them to a safe alphabet. */
export function assertDurableName(name: string): void {
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(name)) {
    throw new Error(`consumer name ${JSON.stringify(name)} must be 1-128 characters of A-Z, a-z, 0-9, '_' and '-'`);
  }
}

/** The LISTEN/NOTIFY channel the relays of `schemaName` wait on. */
export function outboxChannel(schemaName: string): string {
  return `pm_outbox_${schemaName}`;
}
