// Response messages as proto3 JSON, honoring response_body.
import { toJson, type DescMessage, type JsonValue, type MessageShape, type Registry } from "@bufbuild/protobuf";
import type { HttpBinding } from "../descriptors.js";

export interface JsonStyle {
  /** Emit proto field names ("page_size") instead of lowerCamelCase JSON names. */
  readonly useProtoFieldName: boolean;
  /** Emit fields that hold their default value. */
  readonly emitDefaults: boolean;
  /** Resolves google.protobuf.Any contents. */
  readonly registry?: Registry;
}

export const defaultJsonStyle: JsonStyle = { useProtoFieldName: false, emitDefaults: false };

export function responseJson<Desc extends DescMessage>(
  output: Desc,
  message: MessageShape<Desc>,
  binding: Pick<HttpBinding, "responseBody"> | undefined,
  style: JsonStyle,
): JsonValue {
  const json = toJson(output, message, {
    useProtoFieldName: style.useProtoFieldName,
    alwaysEmitImplicit: style.emitDefaults,
    registry: style.registry,
  }) as JsonValue;
  if (!binding || binding.responseBody === "") return json;
  const field = output.fields.find((f) => f.name === binding.responseBody);
  if (!field) return json;
  const key = style.useProtoFieldName ? field.name : field.jsonName;
  const value = (json as Record<string, JsonValue>)[key];
  if (value !== undefined) return value;
  // An unset field: what its JSON default would be.
  if (field.fieldKind === "list") return [];
  if (field.fieldKind === "map" || field.fieldKind === "message") return field.fieldKind === "map" ? {} : null;
  return null;
}
