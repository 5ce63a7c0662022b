/**
 * A small catalog server for tests that need a separate process: the shutdown
 * drain test (SIGTERM during a slow call) and the reflection test (a client
 * process with no generated code for the catalog).
 *
 * Prints one JSON line {"port": n} on stdout once it listens, {"started": id}
 * when a GetProduct call begins and {"closed": name} per closer. GetProduct
 * with id "slow:<ms>" answers after <ms> milliseconds.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { CatalogService, ProductSchema } from "../../gen/shop/catalog/v1/catalog_pb.js";
import { notFound } from "../errors.js";
import { serve, startMeshServer } from "../server.js";
import { createShutdown } from "../shutdown.js";

const say = (line: object) => process.stdout.write(JSON.stringify(line) + "\n");

const server = await startMeshServer({
  name: "catalog-fixture",
  host: "127.0.0.1",
  port: 0,
  services: [
    serve(CatalogService, {
      async getProduct(req) {
        say({ started: req.id });
        const slow = /^slow:(\d+)$/.exec(req.id);
        if (!slow) throw notFound("shop.catalog.v1.Product", req.id);
        await new Promise((r) => setTimeout(r, Number(slow[1])));
        return {
          product: create(ProductSchema, {
            id: req.id,
            sku: "SLOW-1",
            name: "Slow product",
            price: { currencyCode: "EUR", amountMinor: 1250n },
            createTime: timestampFromMs(Date.now()),
          }),
        };
      },
    }),
  ],
});

const shutdown = createShutdown({ timeoutMs: 10_000, log: () => {} });
shutdown.add("db", () => say({ closed: "db" }));
shutdown.add("nats", () => say({ closed: "nats" }));
shutdown.add("grpc", async () => {
  await server.close(5_000);
  say({ closed: "grpc" });
});
shutdown.listen();
say({ port: server.port });
