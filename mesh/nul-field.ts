/**
 * Where a request carries U+0000 in a string. Protobuf allows it; Postgres refuses it in
 * text (SQLSTATE 22021) and in jsonb (22P05), and a handler that stores such a value fails
 * deep inside its statement. mesh/db's answerDatabaseError uses this to answer that failure
 * as INVALID_ARGUMENT naming the field, instead of INTERNAL. Walked only after a statement
 * failed that way, so a call that succeeds never pays for it.
 */
import { ScalarType, isMessage, type DescMessage } from "@bufbuild/protobuf";
import { reflect, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import { isWrapperDesc } from "@bufbuild/protobuf/wkt";

const NUL = "\u0000";

/**
 * The path of the first string holding U+0000, fields in declaration order, depth first, in
 * the form the services' validators name fields: `lines[2].sku`, `labels["k"]`, `address.city`
 * (a wrapper such as google.protobuf.StringValue by its own name).
 * Undefined when there is none (or `message` is not a `desc` message).
 */
export function nulFieldPath(desc: DescMessage, message: unknown): string | undefined {
  if (!isMessage(message, desc)) return undefined;
  return walk(reflect(desc, message), "");
}

function walk(r: ReflectMessage, prefix: string): string | undefined {
  for (const field of r.fields) {
    if (!r.isSet(field)) continue;
    const name = `${prefix}${field.name}`;
    switch (field.fieldKind) {
      case "scalar":
        if (field.scalar === ScalarType.STRING && (r.get(field) as string).includes(NUL)) return name;
        break;
      case "message": {
        // A wrapper (google.protobuf.StringValue) is a string to its users: name the field.
        const found = walk(r.get(field) as ReflectMessage, `${name}.`);
        if (found) return isWrapperDesc(field.message) ? name : found;
        break;
      }
      case "list": {
        let i = 0;
        for (const item of r.get(field) as Iterable<unknown>) {
          const at = `${name}[${i++}]`;
          if (field.listKind === "scalar" && field.scalar === ScalarType.STRING && (item as string).includes(NUL)) return at;
          if (field.listKind === "message") {
            const found = walk(item as ReflectMessage, `${at}.`);
            if (found) return found;
          }
        }
        break;
      }
      case "map":
        for (const [key, value] of r.get(field) as Iterable<[unknown, unknown]>) {
          const at = `${name}[${JSON.stringify(String(key))}]`;
          if (typeof key === "string" && key.includes(NUL)) return at;
          if (field.mapKind === "scalar" && typeof value === "string" && value.includes(NUL)) return at;
          if (field.mapKind === "message") {
            const found = walk(value as ReflectMessage, `${at}.`);
            if (found) return found;
          }
        }
        break;
    }
  }
  return undefined;
}
