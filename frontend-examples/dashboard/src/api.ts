// The GraphQL client: urql for queries and mutations over HTTP, graphql-ws for
// subscriptions over WebSocket, both with the token the user pasted.
import { Client, cacheExchange, fetchExchange, subscriptionExchange } from "@urql/core";
import { createClient as createWSClient, type Client as WSClient } from "graphql-ws";
import { pipe, subscribe } from "wonka";

const TOKEN_KEY = "errorgraph.token";

export function storedToken(): string | null {
  return localStorage.getItem(TOKEN_KEY);
}

export function storeToken(token: string | null): void {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

/** The server: the page's own origin, or `?api=http://host:port` when served elsewhere. */
export function apiBase(): string {
  const given = new URLSearchParams(window.location.search).get("api");
  return (given ?? window.location.origin).replace(/\/$/, "");
}

export class GraphQLFailure extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

export interface Api {
  query<T>(document: string, variables?: Record<string, unknown>): Promise<T>;
  mutate<T>(document: string, variables?: Record<string, unknown>): Promise<T>;
  subscribe<T>(
    document: string,
    variables: Record<string, unknown>,
    onData: (data: T) => void,
  ): () => void;
  onLive(listener: (live: boolean) => void): void;
  close(): void;
}

export function connect(token: string): Api {
  const base = apiBase();
  const liveListeners: Array<(live: boolean) => void> = [];
  const ws: WSClient = createWSClient({
    url: base.replace(/^http/, "ws") + "/graphql",
    connectionParams: { Authorization: `Bearer ${token}` },
    retryAttempts: Infinity,
    shouldRetry: (event) => !(event && (event as CloseEvent).code === 4403),
    on: {
      connected: () => liveListeners.forEach((listener) => listener(true)),
      closed: () => liveListeners.forEach((listener) => listener(false)),
    },
  });
  const client = new Client({
    url: base + "/graphql",
    requestPolicy: "network-only",
    fetchOptions: () => ({ headers: { Authorization: `Bearer ${token}` } }),
    exchanges: [
      cacheExchange,
      fetchExchange,
      subscriptionExchange({
        forwardSubscription(request) {
          const input = { ...request, query: request.query || "" };
          return {
            subscribe(sink) {
              const dispose = ws.subscribe(input, sink);
              return { unsubscribe: dispose };
            },
          };
        },
      }),
    ],
  });

  function unwrap<T>(result: { data?: unknown; error?: { message: string; graphQLErrors: Array<{ message: string; extensions?: Record<string, unknown> }> } }): T {
    if (result.error) {
      const first = result.error.graphQLErrors[0];
      throw new GraphQLFailure(
        first?.message ?? result.error.message,
        first?.extensions?.code as string | undefined,
      );
    }
    return result.data as T;
  }

  return {
    async query<T>(document: string, variables: Record<string, unknown> = {}) {
      return unwrap<T>(await client.query(document, variables).toPromise());
    },
    async mutate<T>(document: string, variables: Record<string, unknown> = {}) {
      return unwrap<T>(await client.mutation(document, variables).toPromise());
    },
    subscribe<T>(document: string, variables: Record<string, unknown>, onData: (data: T) => void) {
      const { unsubscribe } = pipe(
        client.subscription(document, variables),
        subscribe((result) => {
          if (result.data) onData(result.data as T);
        }),
      );
      return unsubscribe;
    },
    onLive(listener) {
      liveListeners.push(listener);
    },
    close() {
      ws.dispose();
    },
  };
}
