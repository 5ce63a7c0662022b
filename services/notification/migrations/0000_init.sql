CREATE SCHEMA "notification";
--> statement-breakpoint
CREATE TABLE "notification"."inbox" (
	"consumer" text NOT NULL,
	"event_id" text NOT NULL,
	"event_type" text NOT NULL,
	"processed_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "inbox_consumer_event_id_pk" PRIMARY KEY("consumer","event_id")
);
--> statement-breakpoint
CREATE TABLE "notification"."notifications" (
	"id" uuid PRIMARY KEY NOT NULL,
	"seq" bigserial NOT NULL,
	"user_id" text NOT NULL,
	"kind" text NOT NULL,
	"title" text NOT NULL,
	"body" text NOT NULL,
	"order_id" text NOT NULL,
	"source_event_id" text NOT NULL,
	"create_time" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "notification"."outbox" (
	"id" uuid PRIMARY KEY NOT NULL,
	"seq" bigserial NOT NULL,
	"aggregate_id" text NOT NULL,
	"event_type" text NOT NULL,
	"subject" text NOT NULL,
	"payload" "bytea" NOT NULL,
	"headers" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"published_at" timestamp with time zone
);
--> statement-breakpoint
CREATE UNIQUE INDEX "notifications_seq_key" ON "notification"."notifications" USING btree ("seq");--> statement-breakpoint
CREATE UNIQUE INDEX "notifications_source_event_key" ON "notification"."notifications" USING btree ("source_event_id");--> statement-breakpoint
CREATE INDEX "notifications_user_seq_idx" ON "notification"."notifications" USING btree ("user_id","seq" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "outbox_unpublished_seq_idx" ON "notification"."outbox" USING btree ("seq") WHERE "notification"."outbox"."published_at" is null;