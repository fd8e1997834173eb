// A TypeScript client generated from the API's /openapi.json (openapi-typescript writes
// build/schema.d.ts, openapi-fetch sends the calls). tsc type-checks it, node runs it
// against a real API: tests/api/test_generated_clients.py passes BASE_URL and API_KEY and
// reads the JSON line it prints.
import createClient from "openapi-fetch";
import type { components, paths } from "./build/schema.d.ts";

declare const process: { env: Record<string, string | undefined> };

type Problem = components["schemas"]["ProblemModel"];
type Status = components["schemas"]["RunStatus"];

const client = createClient<paths>({
  baseUrl: process.env.BASE_URL,
  headers: { Authorization: `Bearer ${process.env.API_KEY}` },
});

async function main(): Promise<void> {
  // a workflow with an input model: its own typed operation
  const order = { sku: "ts-1", qty: 2 } satisfies components["schemas"]["Order"];
  const started = await client.POST("/v1/workflows/orders", {
    body: order,
    params: { header: { "Idempotency-Key": "ts-order" } },
  });
  if (!started.data) throw new Error(`start failed: ${JSON.stringify(started.error)}`);
  const id: string = started.data.id;
  const location = started.response.headers.get("Location");

  // the reference architecture's route: a typed body, other fields are the input
  const viaStart = await client.POST("/start", { body: { workflow: "story", topic: "owls" } });
  if (!viaStart.data) throw new Error(`/start failed: ${JSON.stringify(viaStart.error)}`);

  // one path, two meanings: the same parameter reads the run back by id
  const status = await client.GET("/v1/workflows/{workflow}", {
    params: { path: { workflow: id } },
  });
  if (!status.data) throw new Error("status failed");
  const first: Status = status.data.status;

  const result = await client.GET("/v1/workflows/{workflow_id}/result", {
    params: { path: { workflow_id: id }, query: { wait: 30 } },
  });
  if (!result.data) throw new Error("result failed");

  // an error is a typed problem (application/problem+json)
  const missing = await client.GET("/v1/workflows/{workflow}", {
    params: { path: { workflow: "no-such-workflow" } },
  });
  const problem: Problem | undefined = missing.error;

  // an invalid input is refused with its field errors
  const invalid = await client.POST("/v1/workflows/{workflow}", {
    params: { path: { workflow: "orders" } },
    body: { sku: "", qty: 0 },
  });

  console.log(
    JSON.stringify({
      id,
      location,
      start_id: viaStart.data.workflow_id,
      first_status: first,
      result_status: result.data.status,
      result: result.data.result,
      created_at: status.data.created_at,
      problem_status: missing.response.status,
      problem_type: missing.response.headers.get("Content-Type"),
      problem,
      invalid_status: invalid.response.status,
      invalid_errors: invalid.error?.errors,
    }),
  );
}

// what the types refuse (tsc fails if any of these compiled)
export function refused(): void {
  // @ts-expect-error qty is a number
  void client.POST("/v1/workflows/orders", { body: { sku: "x", qty: "two" } });
  // @ts-expect-error statuses are an enum
  const status: Status = "finished";
  void status;
  // @ts-expect-error "workflow" is a name, not a number
  void client.POST("/start", { body: { workflow: 3 } });
}

await main();
