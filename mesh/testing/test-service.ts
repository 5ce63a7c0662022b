/**
 * A test-only service over the catalog messages, with every streaming kind,
 * built at run time from a FileDescriptorProto: the catalog contract has no
 * streaming RPC, and tests must not add contracts to proto/.
 *
 *   service protomesh.testing.v1.TestService {
 *     rpc WatchProducts(ListProductsRequest) returns (stream Product);   // server streaming
 *     rpc UploadProducts(stream Product) returns (ListProductsResponse); // client streaming
 *     rpc SyncProducts(stream Product) returns (stream Product);         // bidi streaming
 *   }
 */
import { create, createFileRegistry } from "@bufbuild/protobuf";
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import { FileDescriptorProtoSchema, MethodDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import {
  file_shop_catalog_v1_catalog,
  ListProductsRequestSchema,
  ListProductsResponseSchema,
  ProductSchema,
} from "../../gen/shop/catalog/v1/catalog_pb.js";

const file = create(FileDescriptorProtoSchema, {
  name: "protomesh/testing/v1/test_service.proto",
  package: "protomesh.testing.v1",
  syntax: "proto3",
  dependency: ["shop/catalog/v1/catalog.proto"],
  service: [
    {
      name: "TestService",
      method: [
        create(MethodDescriptorProtoSchema, {
          name: "WatchProducts",
          inputType: ".shop.catalog.v1.ListProductsRequest",
          outputType: ".shop.catalog.v1.Product",
          serverStreaming: true,
        }),
        create(MethodDescriptorProtoSchema, {
          name: "UploadProducts",
          inputType: ".shop.catalog.v1.Product",
          outputType: ".shop.catalog.v1.ListProductsResponse",
          clientStreaming: true,
        }),
        create(MethodDescriptorProtoSchema, {
          name: "SyncProducts",
          inputType: ".shop.catalog.v1.Product",
          outputType: ".shop.catalog.v1.Product",
          clientStreaming: true,
          serverStreaming: true,
        }),
      ],
    },
  ],
});

const registry = createFileRegistry(file, (name) =>
  name === file_shop_catalog_v1_catalog.proto.name ? file_shop_catalog_v1_catalog : undefined,
);

export const TestService = registry.getService("protomesh.testing.v1.TestService") as GenService<{
  watchProducts: {
    methodKind: "server_streaming";
    input: typeof ListProductsRequestSchema;
    output: typeof ProductSchema;
  };
  uploadProducts: {
    methodKind: "client_streaming";
    input: typeof ProductSchema;
    output: typeof ListProductsResponseSchema;
  };
  syncProducts: {
    methodKind: "bidi_streaming";
    input: typeof ProductSchema;
    output: typeof ProductSchema;
  };
}>;
