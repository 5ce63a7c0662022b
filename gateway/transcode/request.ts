// Builds the request message of a REST call from its path variables, query
// parameters and body, per the google.api.http rules:
//   body "*"       every field not bound by the path comes from the body;
//   body "<field>" that field comes from the body, the rest from path and query;
//   body ""        no body; non-path fields come from the query.
// Anything that cannot be mapped is a 400 naming the parameter, before any
// upstream call.
import {
  create,
  fromJson,
  mergeFromJson,
  type DescField,
  type DescMessage,
  type JsonObject,
  type JsonValue,
  type MessageShape,
} from "@bufbuild/protobuf";
import { ScalarType } from "@bufbuild/protobuf";
import { badRequest } from "../errors.js";
import type { HttpBinding } from "../descriptors.js";
import type { Bindings } from "./path-template.js";

/** Well-known types whose JSON form is a string or number, so a query parameter can set them. */
const scalarLikeWkt = new Set([
  "google.protobuf.Timestamp",
  "google.protobuf.Duration",
  "google.protobuf.FieldMask",
  "google.protobuf.DoubleValue",
  "google.protobuf.FloatValue",
  "google.protobuf.Int64Value",
  "google.protobuf.UInt64Value",
  "google.protobuf.Int32Value",
  "google.protobuf.UInt32Value",
  "google.protobuf.BoolValue",
  "google.protobuf.StringValue",
  "google.protobuf.BytesValue",
]);

export interface RequestParts {
  readonly vars: Bindings;
  readonly query: URLSearchParams;
  /** The parsed JSON body, or undefined when the request has none. */
  readonly body: JsonValue | undefined;
}

/** Finds a field by its proto name or its JSON name. */
function findField(msg: DescMessage, name: string): DescField | undefined {
  return msg.fields.find((f) => f.name === name || f.jsonName === name);
}

type Leaf =
  | { kind: "scalar"; scalar: ScalarType }
  | { kind: "enum" }
  | { kind: "wkt"; typeName: string };

interface ResolvedPath {
  /** JSON names along the path. */
  readonly jsonPath: string[];
  readonly top: DescField;
  readonly leaf: Leaf;
  readonly repeated: boolean;
}

function resolvePath(input: DescMessage, dotted: string, what: string): ResolvedPath {
  const names = dotted.split(".");
  let msg = input;
  const jsonPath: string[] = [];
  let top: DescField | undefined;
  for (let i = 0; i < names.length; i++) {
    const f = findField(msg, names[i]);
    if (!f) throw badRequest(`unknown ${what} "${dotted}": ${msg.typeName} has no field "${names[i]}"`);
    top ??= f;
    jsonPath.push(f.jsonName);
    const last = i === names.length - 1;
    if (f.fieldKind === "map") throw badRequest(`${what} "${dotted}": map fields cannot be set this way`);
    if (!last) {
      if (f.fieldKind !== "message" || scalarLikeWkt.has(f.message.typeName)) {
        throw badRequest(`unknown ${what} "${dotted}": "${names.slice(0, i + 1).join(".")}" is not a message`);
      }
      msg = f.message;
      continue;
    }
    switch (f.fieldKind) {
      case "scalar":
        return { jsonPath, top, leaf: { kind: "scalar", scalar: f.scalar }, repeated: false };
      case "enum":
        return { jsonPath, top, leaf: { kind: "enum" }, repeated: false };
      case "list":
        if (f.listKind === "scalar") return { jsonPath, top, leaf: { kind: "scalar", scalar: f.scalar }, repeated: true };
        if (f.listKind === "enum") return { jsonPath, top, leaf: { kind: "enum" }, repeated: true };
        if (scalarLikeWkt.has(f.message.typeName)) {
          return { jsonPath, top, leaf: { kind: "wkt", typeName: f.message.typeName }, repeated: true };
        }
        break;
      case "message":
        if (scalarLikeWkt.has(f.message.typeName)) {
          return { jsonPath, top, leaf: { kind: "wkt", typeName: f.message.typeName }, repeated: false };
        }
        break;
    }
    throw badRequest(`${what} "${dotted}": message fields cannot be set from a single value`);
  }
  throw badRequest(`unknown ${what} "${dotted}"`);
}

/** A text value as the proto3 JSON value of a leaf (validated later by fromJson). */
function textToJson(leaf: Leaf, text: string): JsonValue {
  switch (leaf.kind) {
    case "enum":
      return /^-?\d+$/.test(text) ? Number(text) : text;
    case "scalar":
      if (leaf.scalar === ScalarType.BOOL) return text === "true" ? true : text === "false" ? false : text;
      return text;
    case "wkt":
      if (leaf.typeName === "google.protobuf.BoolValue") return text === "true" ? true : text === "false" ? false : text;
      return text;
  }
}

function setPath(obj: JsonObject, path: readonly string[], value: JsonValue, append: boolean): boolean {
  let cur = obj;
  for (let i = 0; i < path.length - 1; i++) {
    const next = cur[path[i]];
    if (next === undefined) {
      const created: JsonObject = {};
      cur[path[i]] = created;
      cur = created;
    } else cur = next as JsonObject;
  }
  const key = path[path.length - 1];
  if (append) {
    const list = (cur[key] as JsonValue[] | undefined) ?? [];
    list.push(value);
    cur[key] = list;
    return true;
  }
  if (key in cur) return false;
  cur[key] = value;
  return true;
}

/**
 * The request message for a REST call. Throws a 400 EdgeError naming the
 * offending path variable, query parameter or body field.
 */
export function buildRequest<Desc extends DescMessage>(
  input: Desc,
  binding: HttpBinding,
  parts: RequestParts,
): MessageShape<Desc> {
  // 1. The body.
  let msg: MessageShape<Desc>;
  const bodyField = binding.body !== "" && binding.body !== "*" ? findField(input, binding.body) : undefined;
  if (binding.body === "" || parts.body === undefined) {
    msg = create(input);
  } else {
    const json: JsonValue = bodyField ? { [bodyField.jsonName]: parts.body } : parts.body;
    if (binding.body === "*" && (typeof json !== "object" || json === null || Array.isArray(json))) {
      throw badRequest(`request body must be a JSON object (${input.typeName})`);
    }
    try {
      msg = fromJson(input, json);
    } catch (e) {
      throw badRequest(`invalid request body: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  // 2. Path variables, then query parameters, into one JSON overlay.
  const overlay: JsonObject = {};
  const pieces: Array<{ what: string; name: string; json: JsonObject }> = [];
  const pathTops = new Set<string>();
  for (const [dotted, text] of parts.vars) {
    const r = resolvePath(input, dotted, "path variable");
    pathTops.add(dotted);
    const value = textToJson(r.leaf, text);
    setPath(overlay, r.jsonPath, value, false);
    const single: JsonObject = {};
    setPath(single, r.jsonPath, value, false);
    pieces.push({ what: "path variable", name: dotted, json: single });
  }
  for (const [name, text] of parts.query) {
    const r = resolvePath(input, name, "query parameter");
    if (binding.body === "*") {
      throw badRequest(`query parameter "${name}" not allowed: the body carries every field`);
    }
    if (bodyField && r.top === bodyField) {
      throw badRequest(`query parameter "${name}" not allowed: "${bodyField.name}" comes from the body`);
    }
    const dotted = r.jsonPath.join(".");
    if ([...pathTops].some((p) => resolvePath(input, p, "path variable").jsonPath.join(".") === dotted)) {
      throw badRequest(`query parameter "${name}" not allowed: it is bound by the path`);
    }
    const value = textToJson(r.leaf, text);
    if (!setPath(overlay, r.jsonPath, value, r.repeated)) {
      throw badRequest(`query parameter "${name}" given more than once`);
    }
    const single: JsonObject = {};
    setPath(single, r.jsonPath, value, r.repeated);
    pieces.push({ what: "query parameter", name, json: single });
  }
  if (pieces.length === 0) return msg;
  try {
    mergeFromJson(input, msg, overlay);
  } catch {
    // Find the parameter at fault, to name it.
    for (const p of pieces) {
      try {
        fromJson(input, p.json);
      } catch (e) {
        throw badRequest(`invalid value for ${p.what} "${p.name}": ${detail(e)}`);
      }
    }
    throw badRequest("invalid path variables or query parameters");
  }
  return msg;
}

function detail(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  // "cannot decode field x.Y.z from JSON: "abc"" -> keep the value part.
  const i = m.indexOf("from JSON: ");
  return i >= 0 ? `cannot parse ${m.slice(i + "from JSON: ".length)}` : m;
}
