// OpenAPI 3.1 from the same descriptors and options the router uses.
import { ScalarType, type DescField, type DescMessage } from "@bufbuild/protobuf";
import type { GatewayMethod, HttpBinding } from "./descriptors.js";

type Schema = Record<string, unknown>;

const wktSchemas: Record<string, Schema> = {
  "google.protobuf.Timestamp": { type: "string", format: "date-time" },
  "google.protobuf.Duration": { type: "string", pattern: "^-?[0-9]+(\\.[0-9]{1,9})?s$" },
  "google.protobuf.FieldMask": { type: "string" },
  "google.protobuf.Empty": { type: "object" },
  "google.protobuf.Struct": { type: "object" },
  "google.protobuf.Value": {},
  "google.protobuf.ListValue": { type: "array" },
  "google.protobuf.Any": { type: "object", properties: { "@type": { type: "string" } }, required: ["@type"] },
  "google.protobuf.DoubleValue": { type: ["number", "null"] },
  "google.protobuf.FloatValue": { type: ["number", "null"] },
  "google.protobuf.Int64Value": { type: ["string", "null"], format: "int64" },
  "google.protobuf.UInt64Value": { type: ["string", "null"], format: "uint64" },
  "google.protobuf.Int32Value": { type: ["integer", "null"], format: "int32" },
  "google.protobuf.UInt32Value": { type: ["integer", "null"], format: "uint32" },
  "google.protobuf.BoolValue": { type: ["boolean", "null"] },
  "google.protobuf.StringValue": { type: ["string", "null"] },
  "google.protobuf.BytesValue": { type: ["string", "null"], format: "byte" },
};

function scalarSchema(t: ScalarType): Schema {
  switch (t) {
    case ScalarType.STRING:
      return { type: "string" };
    case ScalarType.BOOL:
      return { type: "boolean" };
    case ScalarType.BYTES:
      return { type: "string", format: "byte" };
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return { type: "number" };
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return { type: "string", format: "int64" };
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return { type: "string", format: "uint64" };
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return { type: "integer", format: "uint32", minimum: 0 };
    default:
      return { type: "integer", format: "int32" };
  }
}

export function buildOpenApi(methods: readonly GatewayMethod[], title = "protomesh gateway"): Schema {
  const schemas: Record<string, Schema> = {};
  const ref = (m: DescMessage): Schema => {
    const wkt = wktSchemas[m.typeName];
    if (wkt) return wkt;
    if (!(m.typeName in schemas)) {
      schemas[m.typeName] = {}; // placeholder: recursion-safe
      const properties: Record<string, Schema> = {};
      for (const f of m.fields) properties[f.jsonName] = fieldSchema(f);
      schemas[m.typeName] = { type: "object", properties, additionalProperties: false };
    }
    return { $ref: `#/components/schemas/${m.typeName}` };
  };
  const valueSchema = (f: DescField): Schema => {
    if (f.fieldKind === "scalar" || (f.fieldKind === "list" && f.listKind === "scalar")) return scalarSchema(f.scalar!);
    if (f.fieldKind === "enum" || (f.fieldKind === "list" && f.listKind === "enum")) {
      const e = f.enum!;
      return { type: "string", enum: e.values.map((v) => v.name) };
    }
    if (f.fieldKind === "map") {
      const v =
        f.mapKind === "scalar" ? scalarSchema(f.scalar) : f.mapKind === "enum" ? { type: "string", enum: f.enum.values.map((x) => x.name) } : ref(f.message);
      return { type: "object", additionalProperties: v };
    }
    return ref(f.message!);
  };
  const fieldSchema = (f: DescField): Schema => {
    if (f.fieldKind === "list") return { type: "array", items: valueSchema(f) };
    return valueSchema(f);
  };
  const errorSchema: Schema = {
    type: "object",
    properties: {
      code: { type: "string" },
      message: { type: "string" },
      details: { type: "array", items: { type: "object", properties: { type: { type: "string" }, value: { type: "string" }, debug: {} } } },
    },
  };

  const paths: Record<string, Record<string, unknown>> = {};
  for (const m of methods) {
    m.bindings.forEach((b, i) => {
      const path = openApiPath(b);
      const op: Schema = {
        operationId: `${m.service.name}_${m.method.name}${i === 0 ? "" : `_${i}`}`,
        summary: m.method.name,
        tags: [m.service.typeName],
        parameters: [...pathParams(m, b), ...queryParams(m, b)],
        responses: {
          "200": {
            description: m.method.methodKind === "server_streaming" ? "A stream of messages" : "OK",
            content: responseContent(m, b, fieldSchema, ref),
          },
          default: { description: "Error", content: { "application/json": { schema: errorSchema } } },
        },
      };
      if (b.body !== "") {
        const f = b.body === "*" ? undefined : m.method.input.fields.find((x) => x.name === b.body);
        op.requestBody = {
          required: true,
          content: { "application/json": { schema: f ? fieldSchema(f) : ref(m.method.input) } },
        };
      }
      const p = m.declaredPolicy;
      if (p.auth !== "none") op.security = [{ bearer: [] }];
      op["x-protomesh-auth"] = p.auth;
      if (p.rateLimit) op["x-ratelimit"] = p.rateLimit;
      if (p.timeoutMs !== undefined) op["x-timeout-ms"] = p.timeoutMs;
      (paths[path] ??= {})[b.httpMethod.toLowerCase()] = op;
    });
  }
  return {
    openapi: "3.1.0",
    info: { title, version: "1" },
    paths,
    components: {
      schemas,
      securitySchemes: { bearer: { type: "http", scheme: "bearer", bearerFormat: "JWT" } },
    },
  };

  function pathParams(m: GatewayMethod, b: HttpBinding): Schema[] {
    return b.template.variables.map((v) => {
      const f = leaf(m.method.input, v.fieldPath);
      const pattern = b.template.segments
        .slice(v.start, v.end)
        .map((s) => (s.kind === "literal" ? s.value : s.kind === "single" ? "*" : "**"))
        .join("/");
      return {
        name: v.fieldPath.join("."),
        in: "path",
        required: true,
        schema: f ? valueSchema(f) : { type: "string" },
        ...(pattern !== "*" ? { description: `matches ${pattern}` } : {}),
      };
    });
  }

  function queryParams(m: GatewayMethod, b: HttpBinding): Schema[] {
    if (b.body === "*") return [];
    const bound = new Set(b.template.variables.map((v) => v.fieldPath.join(".")));
    const out: Schema[] = [];
    const walk = (msg: DescMessage, prefix: string, depth: number) => {
      for (const f of msg.fields) {
        const name = prefix + f.jsonName;
        const protoPath = prefix === "" ? f.name : `${prefix}${f.name}`;
        if (depth === 0 && f.name === b.body) continue;
        if (bound.has(protoPath) || bound.has(name)) continue;
        if (f.fieldKind === "map") continue;
        const isMsg = f.fieldKind === "message" || (f.fieldKind === "list" && f.listKind === "message");
        const msgType = isMsg ? f.message! : undefined;
        if (msgType && !wktSchemas[msgType.typeName]) {
          if (f.fieldKind === "message" && depth < 2) walk(msgType, `${name}.`, depth + 1);
          continue;
        }
        out.push({ name, in: "query", required: false, schema: fieldSchema(f) });
      }
    };
    walk(m.method.input, "", 0);
    return out;
  }
}

function leaf(msg: DescMessage, path: readonly string[]): DescField | undefined {
  let cur: DescMessage | undefined = msg;
  let f: DescField | undefined;
  for (const p of path) {
    f = cur?.fields.find((x) => x.name === p);
    cur = f?.fieldKind === "message" ? f.message : undefined;
  }
  return f;
}

function openApiPath(b: HttpBinding): string {
  const parts: string[] = [];
  const t = b.template;
  for (let i = 0; i < t.segments.length; ) {
    const v = t.variables.find((x) => x.start === i);
    if (v) {
      parts.push(`{${v.fieldPath.join(".")}}`);
      i = v.end;
      continue;
    }
    const s = t.segments[i];
    parts.push(s.kind === "literal" ? s.value : s.kind === "single" ? "*" : "**");
    i++;
  }
  return `/${parts.join("/")}${t.verb !== undefined ? `:${t.verb}` : ""}`;
}

function responseContent(
  m: GatewayMethod,
  b: HttpBinding,
  fieldSchema: (f: DescField) => Schema,
  ref: (m: DescMessage) => Schema,
): Record<string, unknown> {
  const f = b.responseBody ? m.method.output.fields.find((x) => x.name === b.responseBody) : undefined;
  const schema = f ? fieldSchema(f) : ref(m.method.output);
  if (m.method.methodKind === "server_streaming") {
    return {
      "application/x-ndjson": { schema: { type: "object", properties: { result: schema, error: { type: "object" } } } },
      "text/event-stream": { schema: { type: "string" } },
    };
  }
  return { "application/json": { schema } };
}
