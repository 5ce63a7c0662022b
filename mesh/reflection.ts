/**
 * gRPC server reflection, v1 and v1alpha, answered from the descriptors that
 * protoc-gen-es embedded in gen/, so grpcurl, grpcui, Postman and the like can
 * call a mesh server without .proto files.
 *
 * Complete across files: every file answer carries the file and all its
 * transitive dependencies (google/protobuf/timestamp.proto,
 * shop/common/v1/money.proto, ...), so a client can resolve every type it
 * names. (@grpc/reflection fed from proto-loader loses cross-file
 * dependencies; grpc-node issues 2595 and 2958.)
 *
 * API
 *   class ReflectionIndex
 *     constructor(services: DescService[])       the services the server offers
 *     answer(req: ServerReflectionRequest): ServerReflectionResponse (v1 shapes)
 *   addReflection(server: grpc.Server, services: DescService[]): void    v1 and v1alpha
 */
import * as grpc from "@grpc/grpc-js";
import { create, createRegistry, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescFile, DescMessage, DescService, Registry } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as v1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { methodDefinition } from "./grpc-codec.js";

type Request = v1.ServerReflectionRequest;
type Response = v1.ServerReflectionResponse;
type ResponseInit = Omit<Response, "$typeName" | "$unknown" | "originalRequest" | "validHost">;

/** Every file the given files depend on, directly or not, each once, dependencies first. */
function transitiveFiles(roots: Iterable<DescFile>): DescFile[] {
  const seen = new Set<string>();
  const out: DescFile[] = [];
  const visit = (f: DescFile) => {
    if (seen.has(f.proto.name)) return;
    seen.add(f.proto.name);
    for (const d of f.dependencies) visit(d);
    out.push(f);
  };
  for (const f of roots) visit(f);
  return out;
}

/** Answers reflection questions about a fixed set of services. */
export class ReflectionIndex {
  private readonly files = new Map<string, DescFile>();
  private readonly registry: Registry;
  private readonly encoded = new Map<string, Uint8Array>();
  private readonly serviceNames: string[];

  constructor(services: DescService[]) {
    this.serviceNames = [...new Set(services.map((s) => s.typeName))].sort();
    for (const f of transitiveFiles(services.map((s) => s.file))) this.files.set(f.proto.name, f);
    this.registry = createRegistry(...this.files.values());
  }

  answer(req: Request): Response {
    return create(v1.ServerReflectionResponseSchema, {
      validHost: req.host,
      originalRequest: req,
      ...this.respond(req),
    });
  }

  private respond(req: Request): ResponseInit {
    const q = req.messageRequest;
    switch (q.case) {
      case "listServices":
        return {
          messageResponse: {
            case: "listServicesResponse",
            value: create(v1.ListServiceResponseSchema, { service: this.serviceNames.map((name) => ({ name })) }),
          },
        };
      case "fileByFilename": {
        const file = this.files.get(q.value);
        return file ? this.fileAnswer(file) : this.error(grpc.status.NOT_FOUND, `file "${q.value}" not found`);
      }
      case "fileContainingSymbol": {
        const file = this.fileOfSymbol(q.value);
        return file ? this.fileAnswer(file) : this.error(grpc.status.NOT_FOUND, `symbol "${q.value}" not found`);
      }
      case "fileContainingExtension": {
        const message = this.registry.getMessage(q.value.containingType);
        const ext = message && this.registry.getExtensionFor(message, q.value.extensionNumber);
        return ext
          ? this.fileAnswer(ext.file)
          : this.error(
              grpc.status.NOT_FOUND,
              `extension ${q.value.extensionNumber} of "${q.value.containingType}" not found`,
            );
      }
      case "allExtensionNumbersOfType": {
        const message = this.registry.getMessage(q.value);
        if (!message) return this.error(grpc.status.NOT_FOUND, `type "${q.value}" not found`);
        return {
          messageResponse: {
            case: "allExtensionNumbersResponse",
            value: create(v1.ExtensionNumberResponseSchema, {
              baseTypeName: message.typeName,
              extensionNumber: this.extensionNumbersOf(message),
            }),
          },
        };
      }
      default:
        return this.error(grpc.status.INVALID_ARGUMENT, "no question in the reflection request");
    }
  }

  /** The file declaring a service, method, message, field, enum, enum value or extension. */
  private fileOfSymbol(symbol: string): DescFile | undefined {
    const name = symbol.startsWith(".") ? symbol.slice(1) : symbol;
    const direct = this.registry.get(name);
    if (direct) return direct.file;
    // A member: method of a service, field or oneof of a message, value of an enum.
    const dot = name.lastIndexOf(".");
    if (dot < 0) return undefined;
    const parent = this.registry.get(name.slice(0, dot));
    const member = name.slice(dot + 1);
    switch (parent?.kind) {
      case "service":
        return parent.methods.some((m) => m.name === member) ? parent.file : undefined;
      case "message":
        return parent.fields.some((f) => f.name === member) || parent.oneofs.some((o) => o.name === member)
          ? parent.file
          : undefined;
      case "enum":
        return parent.values.some((v) => v.name === member) ? parent.file : undefined;
      default: {
        // Enum values are scoped like siblings of their enum: pkg.VALUE_NAME.
        for (const t of this.registry) {
          if (t.kind === "enum" && t.typeName.slice(0, t.typeName.lastIndexOf(".")) === name.slice(0, dot)) {
            if (t.values.some((v) => v.name === member)) return t.file;
          }
        }
        return undefined;
      }
    }
  }

  private extensionNumbersOf(message: DescMessage): number[] {
    const numbers: number[] = [];
    for (const t of this.registry) {
      if (t.kind === "extension" && t.extendee.typeName === message.typeName) numbers.push(t.number);
    }
    return numbers.sort((a, b) => a - b);
  }

  /** The file first, then every file it depends on, transitively. */
  private fileAnswer(file: DescFile): ResponseInit {
    const chain = transitiveFiles([file]).reverse();
    return {
      messageResponse: {
        case: "fileDescriptorResponse",
        value: create(v1.FileDescriptorResponseSchema, {
          fileDescriptorProto: chain.map((f) => this.encode(f)),
        }),
      },
    };
  }

  private encode(file: DescFile): Uint8Array {
    let bytes = this.encoded.get(file.proto.name);
    if (!bytes) {
      bytes = toBinary(FileDescriptorProtoSchema, file.proto);
      this.encoded.set(file.proto.name, bytes);
    }
    return bytes;
  }

  private error(code: grpc.status, message: string): ResponseInit {
    return {
      messageResponse: {
        case: "errorResponse",
        value: create(v1.ErrorResponseSchema, { errorCode: code, errorMessage: message }),
      },
    };
  }
}

/**
 * Registers grpc.reflection.v1 and v1alpha on a grpc-js server. The two
 * versions share field numbers, so a v1alpha request is answered by
 * re-reading its bytes as v1 and the v1 answer's bytes as v1alpha.
 */
export function addReflection(server: grpc.Server, services: DescService[]): void {
  const index = new ReflectionIndex(services);
  const v1Method = v1.ServerReflection.method.serverReflectionInfo;
  server.addService({ serverReflectionInfo: methodDefinition(v1Method) }, {
    serverReflectionInfo: reflectionHandler((req: Request) => index.answer(req)),
  });
  const alphaMethod = v1alpha.ServerReflection.method.serverReflectionInfo;
  server.addService({ serverReflectionInfo: methodDefinition(alphaMethod) }, {
    serverReflectionInfo: reflectionHandler((req: v1alpha.ServerReflectionRequest) => {
      const asV1 = fromBinary(v1.ServerReflectionRequestSchema, toBinary(v1alpha.ServerReflectionRequestSchema, req));
      const answer = index.answer(asV1);
      return fromBinary(v1alpha.ServerReflectionResponseSchema, toBinary(v1.ServerReflectionResponseSchema, answer));
    }),
  });
}

function reflectionHandler<Req, Res>(answer: (req: Req) => Res): grpc.handleBidiStreamingCall<Req, Res> {
  return (call) => {
    call.on("data", (req: Req) => {
      try {
        call.write(answer(req));
      } catch {
        call.emit("error", { code: grpc.status.INTERNAL, details: "reflection failed" });
      }
    });
    call.on("end", () => call.end());
    call.on("error", () => {
      /* the client went away; nothing to clean up */
    });
  };
}
