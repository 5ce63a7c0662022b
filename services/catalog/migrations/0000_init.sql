CREATE SCHEMA "catalog";
--> statement-breakpoint
CREATE TABLE "catalog"."products" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"sku" text NOT NULL,
	"name" text NOT NULL,
	"description" text DEFAULT '' NOT NULL,
	"category" text NOT NULL,
	"price_currency" text NOT NULL,
	"price_amount_minor" bigint NOT NULL,
	"tags" text[] DEFAULT '{}'::text[] NOT NULL,
	"image_url" text DEFAULT '' NOT NULL,
	"create_time" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX "products_sku_key" ON "catalog"."products" USING btree ("sku");--> statement-breakpoint
CREATE INDEX "products_category_sku_idx" ON "catalog"."products" USING btree ("category","sku");