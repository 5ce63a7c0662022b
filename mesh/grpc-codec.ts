/**
 * The bridge between protobuf-es descriptors and @grpc/grpc-js: method paths,
 * (de)serializers and metadata <-> Headers. Shared by mesh/server,
 * mesh/client and mesh/reflection, so the generated descriptor is the only
 * definition of a service (no .proto loading at run time).
 *
 * API
 *   methodPath(method: DescMethod): string              "/shop.catalog.v1.CatalogService/GetProduct"
 *   serializer(schema): (msg) => Buffer
 *   deserializer(schema): (buf: Buffer) => MessageShape
 *   methodDefinition(method): grpc.MethodDefinition
 *   metadataToHeaders(md: grpc.Metadata): Headers      binary (-bin) values become base64
 *   headersToMetadata(h: Headers | undefined, into?): grpc.Metadata
 */
import * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, DescMethod, MessageShape } from "@bufbuild/protobuf";

/** The HTTP/2 path of a method: `/package.Service/Method`. */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/** Encodes a message of `schema` for the wire without copying the bytes. */
export function serializer<D extends DescMessage>(schema: D): (msg: MessageShape<D>) => Buffer {
  return (msg) => {
    const bytes = toBinary(schema, msg);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

/** Decodes a message of `schema` from the wire. */
export function deserializer<D extends DescMessage>(schema: D): (buf: Buffer) => MessageShape<D> {
  return (buf) => fromBinary(schema, buf);
}

/** The grpc-js method definition of a descriptor method. */
export function methodDefinition(method: DescMethod): grpc.MethodDefinition<unknown, unknown> {
  const requestStream = method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
  const responseStream = method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming";
  return {
    path: methodPath(method),
    requestStream,
    responseStream,
    requestSerialize: serializer(method.input) as (v: unknown) => Buffer,
    requestDeserialize: deserializer(method.input),
    responseSerialize: serializer(method.output) as (v: unknown) => Buffer,
    responseDeserialize: deserializer(method.output),
    originalName: method.localName,
  };
}

/** grpc metadata as fetch Headers; binary values are base64 as on the wire. */
export function metadataToHeaders(md: grpc.Metadata): Headers {
  return new Headers(metadataEntries(md));
}

/** grpc metadata as [name, value] pairs, for a `new Headers(...)` made elsewhere. */
export function metadataEntries(md: grpc.Metadata): [string, string][] {
  const entries: [string, string][] = [];
  const map = md.getMap();
  for (const key in map) {
    const values = md.get(key);
    for (const value of values) {
      entries.push([key, typeof value === "string" ? value : Buffer.from(value).toString("base64")]);
    }
  }
  return entries;
}

// Headers HTTP/2 or grpc-js own; copying them into metadata is an error or a lie.
const reserved = new Set([
  "content-type",
  "te",
  "host",
  "connection",
  "user-agent",
  "grpc-timeout",
  "grpc-encoding",
  "grpc-accept-encoding",
  "grpc-status",
  "grpc-message",
  "grpc-status-details-bin",
  "content-length",
  "transfer-encoding",
]);

/** fetch Headers as grpc metadata; `-bin` values are decoded from base64. */
export function headersToMetadata(headers: Headers | undefined, into = new grpc.Metadata()): grpc.Metadata {
  headers?.forEach((value, key) => {
    if (reserved.has(key) || key.startsWith(":")) return;
    if (key.endsWith("-bin")) {
      // Headers joins repeated values with ", ".
      for (const part of value.split(/,\s*/)) into.add(key, Buffer.from(part, "base64"));
    } else {
      into.add(key, value);
    }
  });
  return into;
}
