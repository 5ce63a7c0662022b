// Pure transcoding logic, table-driven: templates, routing, request building,
// response JSON. The end-to-end conformance suite is gateway/rest.test.ts.
import test from "ava";
import { create, toJson, type JsonValue } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { EchoRequestSchema, EchoResponseSchema, EchoService } from "../../gen/protomesh/testing/v1/echo_pb.js";
import { describeService } from "../descriptors.js";
import { EdgeError } from "../errors.js";
import { matchTemplate, parsePathTemplate, splitRequestPath } from "./path-template.js";
import { buildRequest } from "./request.js";
import { responseJson } from "./response.js";
import { createRestRouter } from "./router.js";

const match = (template: string, path: string) => {
  const s = splitRequestPath(path)!;
  const b = matchTemplate(parsePathTemplate(template), s.segments, s.verb);
  return b && Object.fromEntries(b);
};

const templateCases: Array<[string, string, Record<string, string> | undefined]> = [
  ["/v1/products", "/v1/products", {}],
  ["/v1/products", "/v1/products/x", undefined],
  ["/v1/products/{id}", "/v1/products/p1", { id: "p1" }],
  ["/v1/products/{id}", "/v1/products/", undefined],
  ["/v1/products/{id}", "/v1/products/a%20b", { id: "a b" }],
  ["/v1/products/{id}", "/v1/products/a%2Fb", { id: "a/b" }],
  ["/v1/orders/{order.id}", "/v1/orders/o-1", { "order.id": "o-1" }],
  ["/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2", { name: "shelves/1/books/2" }],
  ["/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books", undefined],
  ["/v1/{name=shelves/*/books/*}", "/v1/shelves/1/notes/2", undefined],
  ["/v1/files/{path=**}", "/v1/files/a/b/c.txt", { path: "a/b/c.txt" }],
  ["/v1/files/{path=**}", "/v1/files/a%2Fb/c", { path: "a%2Fb/c" }],
  ["/v1/tail/{path=**}/meta", "/v1/tail/x/y/meta", { path: "x/y" }],
  ["/v1/tail/{path=**}/meta", "/v1/tail/x/y", undefined],
  ["/v1/products:batchGet", "/v1/products:batchGet", {}],
  ["/v1/products:batchGet", "/v1/products", undefined],
  ["/v1/echo/{id}:cancel", "/v1/echo/7:cancel", { id: "7" }],
  ["/v1/echo/{id}:cancel", "/v1/echo/7", undefined],
  ["/v1/echo/{id}", "/v1/echo/7:cancel", { id: "7:cancel" }],
  ["/v1/*/x", "/v1/anything/x", {}],
];

for (const [template, path, want] of templateCases) {
  test(`template ${template} ~ ${path}`, (t) => {
    t.deepEqual(match(template, path), want);
  });
}

const badTemplates = ["v1/x", "/v1//x", "/v1/{id", "/v1/{a.1}", "/v1/{x=**}/{y}", "/v1/{id}/{id}", "/v1/{a={b}}"];
for (const bad of badTemplates) {
  test(`template syntax error: ${bad}`, (t) => {
    t.throws(() => parsePathTemplate(bad), { name: "TemplateSyntaxError" });
  });
}

const echo = describeService(EchoService);
const router = createRestRouter(echo.methods);

test("only public methods are exposed", (t) => {
  t.false(echo.methods.some((m) => m.method.name === "Internal"));
  t.true(echo.methods.some((m) => m.method.name === "Echo"));
});

const routeCases: Array<[string, string, string | undefined, Record<string, string>?]> = [
  ["GET", "/v1/echo/1", "Echo", { id: "1" }],
  ["POST", "/v1/echo", "Echo", {}],
  ["PUT", "/v1/echo/1", "Echo", { id: "1" }],
  ["DELETE", "/v1/echo/1", "Echo", { id: "1" }],
  ["POST", "/v1/echo/1:cancel", "Echo", { id: "1" }],
  ["SEARCH", "/v1/echo", "Echo", {}],
  ["GET", "/v1/shelves/1/books/2", "EchoShapes", { name: "shelves/1/books/2" }],
  ["GET", "/v1/files/a/b", "EchoShapes", { path: "a/b" }],
  ["PATCH", "/v1/nested/lbl", "EchoShapes", { "nested.label": "lbl" }],
  ["GET", "/v1/echo/1/stream", "EchoStream", { id: "1" }],
  ["HEAD", "/v1/echo/1", "Echo", { id: "1" }],
  ["GET", "/v1/internal", undefined],
  ["GET", "/nope", undefined],
];
for (const [verb, path, want, vars] of routeCases) {
  test(`route ${verb} ${path}`, (t) => {
    const r = router.match(verb, path);
    if (want === undefined) {
      t.is(r.kind, "not_found");
      return;
    }
    t.is(r.kind, "match");
    if (r.kind !== "match") return;
    t.is(r.route.method.method.name, want);
    t.deepEqual(Object.fromEntries(r.vars), vars);
  });
}

test("405 lists the allowed methods", (t) => {
  const r = router.match("PATCH", "/v1/echo/1");
  t.deepEqual(r, { kind: "method_not_allowed", allow: ["DELETE", "GET", "PUT"] });
});

// [binding index of Echo/EchoShapes, vars, query, body] -> expected request JSON or an error naming a field.
const echoMethod = echo.methods.find((m) => m.method.name === "Echo")!;
const shapesMethod = echo.methods.find((m) => m.method.name === "EchoShapes")!;
type ReqCase = {
  name: string;
  method?: typeof echoMethod;
  binding?: number;
  vars?: Record<string, string>;
  query?: string;
  body?: JsonValue;
  want?: JsonValue;
  error?: RegExp;
};
const reqCases: ReqCase[] = [
  { name: "path var", vars: { id: "x" }, want: { id: "x" } },
  { name: "scalars", query: "count=5&big=9007199254740993&flag=true&ratio=1.5", want: { count: 5, big: "9007199254740993", flag: true, ratio: 1.5 } },
  { name: "enum by name", query: "color=COLOR_RED", want: { color: "COLOR_RED" } },
  { name: "enum by number", query: "color=2", want: { color: "COLOR_GREEN" } },
  { name: "repeated", query: "tags=a&tags=b&numbers=1&numbers=2&colors=1&colors=COLOR_GREEN", want: { tags: ["a", "b"], numbers: [1, 2], colors: ["COLOR_RED", "COLOR_GREEN"] } },
  { name: "nested", query: "nested.label=l&nested.value=3&nested.inner.on=true", want: { nested: { label: "l", value: 3, inner: { on: true } } } },
  { name: "json names", query: "snakeCaseField=a", want: { snakeCaseField: "a" } },
  { name: "proto names", query: "snake_case_field=a&fail_times=2", want: { snakeCaseField: "a", failTimes: 2 } },
  { name: "timestamp", query: "at=2024-05-06T07:08:09Z", want: { at: "2024-05-06T07:08:09Z" } },
  { name: "duration", query: "wait=1.5s", want: { wait: "1.500s" } },
  { name: "wrappers", query: "note=hi&limit=7", want: { note: "hi", limit: 7 } },
  { name: "bytes", query: "data=aGk=", want: { data: "aGk=" } },
  { name: "path + query", vars: { id: "p" }, query: "count=1", want: { id: "p", count: 1 } },
  { name: "unknown param", query: "nope=1", error: /unknown query parameter "nope"/ },
  { name: "unknown nested param", query: "nested.nope=1", error: /unknown query parameter "nested.nope"/ },
  { name: "wrong int", query: "count=abc", error: /query parameter "count"/ },
  { name: "int overflow", query: "count=99999999999", error: /query parameter "count"/ },
  { name: "wrong bool", query: "flag=yes", error: /query parameter "flag"/ },
  { name: "wrong enum", query: "color=PURPLE", error: /query parameter "color"/ },
  { name: "wrong timestamp", query: "at=yesterday", error: /query parameter "at"/ },
  { name: "wrong duration", query: "wait=5 minutes", error: /query parameter "wait"/ },
  { name: "map param", query: "labels=x", error: /query parameter "labels": map/ },
  { name: "message param", query: "nested=x", error: /query parameter "nested": message fields/ },
  { name: "twice", query: "count=1&count=2", error: /"count" given more than once/ },
  { name: "path conflict", vars: { id: "p" }, query: "id=q", error: /"id" not allowed: it is bound by the path/ },
  { name: "body *", binding: 1, body: { id: "b", count: 2, labels: { k: "v" } }, want: { id: "b", count: 2, labels: { k: "v" } } },
  { name: "body * with proto names", binding: 1, body: { snake_case_field: "x" }, want: { snakeCaseField: "x" } },
  { name: "body * + query", binding: 1, body: {}, query: "count=1", error: /"count" not allowed: the body carries every field/ },
  { name: "body * unknown field", binding: 1, body: { nope: 1 }, error: /invalid request body.*nope/ },
  { name: "body * wrong type", binding: 1, body: { count: "x" }, error: /invalid request body/ },
  { name: "body * not an object", binding: 1, body: [1], error: /must be a JSON object/ },
  { name: "body * path wins", binding: 2, vars: { id: "path" }, body: { id: "body", count: 1 }, want: { id: "path", count: 1 } },
  { name: "body field + nested path", method: shapesMethod, binding: 3, vars: { "nested.label": "L" }, body: { value: 4 }, query: "count=2", want: { nested: { label: "L", value: 4 }, count: 2 } },
  { name: "body field + query on it", method: shapesMethod, binding: 3, vars: { "nested.label": "L" }, body: {}, query: "nested.value=1", error: /comes from the body/ },
];
for (const c of reqCases) {
  test(`request: ${c.name}`, (t) => {
    const m = c.method ?? echoMethod;
    const binding = m.bindings[c.binding ?? 0];
    const run = () =>
      buildRequest(m.method.input, binding, {
        vars: new Map(Object.entries(c.vars ?? {})),
        query: new URLSearchParams(c.query ?? ""),
        body: c.body,
      });
    if (c.error) {
      const e = t.throws(run, { instanceOf: EdgeError });
      t.regex(e!.rawMessage, c.error);
      t.is(e!.code, Code.InvalidArgument);
      t.is(e!.httpStatus, 400);
      return;
    }
    t.deepEqual(toJson(EchoRequestSchema, run() as never), c.want);
  });
}

test("response JSON: camelCase by default, proto names on request, response_body", (t) => {
  const msg = create(EchoResponseSchema, { request: { snakeCaseField: "v", count: 0 }, index: 2 });
  t.deepEqual(responseJson(EchoResponseSchema, msg, undefined, { useProtoFieldName: false, emitDefaults: false }), {
    request: { snakeCaseField: "v" },
    index: 2,
  });
  t.deepEqual(responseJson(EchoResponseSchema, msg, undefined, { useProtoFieldName: true, emitDefaults: false }), {
    request: { snake_case_field: "v" },
    index: 2,
  });
  t.deepEqual(responseJson(EchoResponseSchema, msg, { responseBody: "request" }, { useProtoFieldName: false, emitDefaults: false }), {
    snakeCaseField: "v",
  });
  const empty = create(EchoResponseSchema);
  t.is(responseJson(EchoResponseSchema, empty, { responseBody: "request" }, { useProtoFieldName: false, emitDefaults: false }), null);
});
