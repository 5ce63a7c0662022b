CREATE SCHEMA "user";
--> statement-breakpoint
CREATE TABLE "user"."inbox" (
	"consumer" text NOT NULL,
	"event_id" text NOT NULL,
	"event_type" text NOT NULL,
	"processed_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "inbox_consumer_event_id_pk" PRIMARY KEY("consumer","event_id")
);
--> statement-breakpoint
CREATE TABLE "user"."outbox" (
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
CREATE TABLE "user"."points_awards" (
	"order_id" text PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"points" bigint NOT NULL,
	"seq" bigserial NOT NULL,
	"award_time" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "user"."users" (
	"id" uuid PRIMARY KEY NOT NULL,
	"email" text NOT NULL,
	"password_hash" text NOT NULL,
	"display_name" text NOT NULL,
	"role" text DEFAULT 'user' NOT NULL,
	"create_time" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "users_role_check" CHECK ("user"."users"."role" in ('user', 'admin'))
);
--> statement-breakpoint
CREATE INDEX "outbox_unpublished_seq_idx" ON "user"."outbox" USING btree ("seq") WHERE "user"."outbox"."published_at" is null;--> statement-breakpoint
CREATE INDEX "points_awards_user_seq_idx" ON "user"."points_awards" USING btree ("user_id","seq" DESC NULLS LAST);--> statement-breakpoint
CREATE UNIQUE INDEX "users_email_key" ON "user"."users" USING btree ("email");