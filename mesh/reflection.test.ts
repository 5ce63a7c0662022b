// gRPC server reflection from a client with no generated code for the
// service it explores: it speaks the reflection protocol over a raw grpc-js
// bidi stream to a server in another process, decodes the FileDescriptorProtos
// and builds its own registry from them. A file missing a dependency (grpc-node
// issues 2595, 2958) makes createFileRegistry throw, so the test would fail.
import test from "ava";
import * as grpc from "@grpc/grpc-js";
import { create, createFileRegistry, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import * as v1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { spawnFixture } from "./testing/spawn-fixture.js";
import type { Fixture } from "./testing/spawn-fixture.js";

let fixture: Fixture;
let raw: grpc.Client;

test.before(async () => {
  fixture = await spawnFixture();
  raw = new grpc.Client(`127.0.0.1:${fixture.port}`, grpc.credentials.createInsecure());
});

test.after.always(async () => {
  raw?.close();
  fixture?.child.kill("SIGTERM");
  await fixture?.exited;
});

type Api = typeof v1 | typeof v1alpha;

/** Sends each request on one reflection stream and collects the answers, in order. */
async function ask(
  api: Api,
  requests: MessageShape<typeof v1.ServerReflectionRequestSchema>["messageRequest"][],
): Promise<v1.ServerReflectionResponse[]> {
  const path = api === v1 ? "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" : "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
  const reqSchema: DescMessage = api.ServerReflectionRequestSchema;
  const call = raw.makeBidiStreamRequest(
    path,
    (r: Uint8Array) => Buffer.from(r),
    (b: Buffer) => b,
  );
  const answers: v1.ServerReflectionResponse[] = [];
  const done = new Promise<void>((resolve, reject) => {
    call.on("data", (b: Buffer) => {
      // v1alpha answers have the same field numbers: decode both as v1.
      answers.push(fromBinary(v1.ServerReflectionResponseSchema, b));
      if (answers.length === requests.length) call.end();
    });
    call.on("error", reject);
    call.on("end", resolve);
  });
  for (const messageRequest of requests) {
    call.write(toBinary(reqSchema, create(reqSchema, { host: "", messageRequest } as never)));
  }
  await done;
  return answers;
}

function filesOf(res: v1.ServerReflectionResponse): FileDescriptorProto[] {
  if (res.messageResponse.case !== "fileDescriptorResponse") {
    throw new Error(`expected files, got ${res.messageResponse.case}: ${JSON.stringify(res.messageResponse.value)}`);
  }
  return res.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
}

for (const [label, api] of [["v1", v1], ["v1alpha", v1alpha]] as const) {
  test(`${label}: list_services names the catalog, health and reflection`, async (t) => {
    const [res] = await ask(api, [{ case: "listServices", value: "" }]);
    t.is(res.messageResponse.case, "listServicesResponse");
    const names = res.messageResponse.case === "listServicesResponse" ? res.messageResponse.value.service.map((s) => s.name) : [];
    t.true(names.includes("shop.catalog.v1.CatalogService"));
    t.true(names.includes("grpc.health.v1.Health"));
    t.true(names.includes("grpc.reflection.v1.ServerReflection"));
    t.true(names.includes("grpc.reflection.v1alpha.ServerReflection"));
  });

  test(`${label}: describing CatalogService.CreateProduct resolves Money and Timestamp across files`, async (t) => {
    const [res] = await ask(api, [{ case: "fileContainingSymbol", value: "shop.catalog.v1.CatalogService.CreateProduct" }]);
    const files = filesOf(res);
    t.is(files[0].name, "shop/catalog/v1/catalog.proto");
    const names = files.map((f) => f.name);
    for (const dep of [
      "google/protobuf/timestamp.proto",
      "shop/common/v1/money.proto",
      "protomesh/v1/options.proto",
      "google/api/annotations.proto",
      "google/api/http.proto",
      "google/protobuf/descriptor.proto",
      "google/protobuf/duration.proto",
    ]) {
      t.true(names.includes(dep), `missing ${dep}`);
    }
    // A registry only builds when every import, transitively, is present.
    const byName = new Map(files.map((f) => [f.name, f]));
    const registry = createFileRegistry(files[0], (name) => byName.get(name));
    const method = registry.getService("shop.catalog.v1.CatalogService")?.methods.find((m) => m.name === "CreateProduct");
    t.truthy(method);
    const product = method!.input.fields.find((f) => f.name === "product")?.message;
    t.is(product?.typeName, "shop.catalog.v1.Product");
    const price = product?.fields.find((f) => f.name === "price");
    t.is(price?.message?.typeName, "shop.common.v1.Money");
    t.deepEqual(price?.message?.fields.map((f) => f.name), ["currency_code", "amount_minor"]);
    t.is(product?.fields.find((f) => f.name === "create_time")?.message?.typeName, "google.protobuf.Timestamp");
    // The custom options survive: the gateway and tools can read the http rule.
    t.true((method!.proto.options?.$unknown?.length ?? 0) > 0);
  });

  test(`${label}: file_by_filename, extensions and errors`, async (t) => {
    const answers = await ask(api, [
      { case: "fileByFilename", value: "shop/common/v1/money.proto" },
      { case: "fileContainingSymbol", value: "shop.common.v1.Money" },
      { case: "fileContainingSymbol", value: "shop.catalog.v1.Product.price" },
      { case: "fileContainingExtension", value: create(v1.ExtensionRequestSchema, { containingType: "google.protobuf.MethodOptions", extensionNumber: 51730 }) },
      { case: "allExtensionNumbersOfType", value: "google.protobuf.MethodOptions" },
      { case: "fileContainingSymbol", value: "shop.catalog.v1.Nope" },
      { case: "fileByFilename", value: "nope.proto" },
    ]);
    t.is(answers.length, 7);
    t.deepEqual(filesOf(answers[0]).map((f) => f.name), ["shop/common/v1/money.proto"]);
    t.is(filesOf(answers[1])[0].name, "shop/common/v1/money.proto");
    t.is(filesOf(answers[2])[0].name, "shop/catalog/v1/catalog.proto");
    t.is(filesOf(answers[3])[0].name, "protomesh/v1/options.proto");
    const ext = answers[4].messageResponse;
    t.is(ext.case, "allExtensionNumbersResponse");
    if (ext.case === "allExtensionNumbersResponse") {
      t.is(ext.value.baseTypeName, "google.protobuf.MethodOptions");
      t.true(ext.value.extensionNumber.includes(51730)); // (protomesh.v1.method)
      t.true(ext.value.extensionNumber.includes(72295728)); // (google.api.http)
    }
    for (const a of answers.slice(5)) {
      t.is(a.messageResponse.case, "errorResponse");
      if (a.messageResponse.case === "errorResponse") t.is(a.messageResponse.value.errorCode, grpc.status.NOT_FOUND);
    }
    t.is(answers[0].originalRequest?.messageRequest.case, "fileByFilename");
  });
}
