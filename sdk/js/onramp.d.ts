// Types of Onramp's browser SDK (onramp.js / onramp.iife.js, which sets window.Onramp).

export declare const VERSION: string;

export interface OnrampOptions {
  /** Base URL of Onramp's collector, e.g. "https://onramp.example.com" ("" = same origin). */
  host?: string;
  /** The source's write key (public: it can only send events). */
  writeKey: string;
  /** A key that /v1/decide accepts (Authorization: Bearer). Without it decide() answers the fallback. */
  /** A `collector.decide_keys` value: lets `decide()` ask for decisions, reads no profile. */
  decideKey?: string;
  /** @deprecated use `decideKey` (an old read key still works for `/v1/decide`). */
  readKey?: string;
  /** Send as soon as this many events wait (default 20; also the largest batch). */
  flushAt?: number;
  /** Send at most this long after the first waiting event (default 1000 ms). */
  flushIntervalMs?: number;
  /** Offline queue bound; past it the oldest waiting events are dropped (default 1000). */
  maxQueueSize?: number;
  /** Largest request body (default 450 KB; the collector accepts 500 KB). */
  maxBatchBytes?: number;
  /** Largest sendBeacon body (default 60 KB; browsers refuse more than 64 KB). */
  maxBeaconBytes?: number;
  /** First retry delay; doubles per failure, with jitter (default 500 ms). */
  retryBaseMs?: number;
  /** Longest retry delay, unless Retry-After asks for more (default 30 s). */
  retryMaxMs?: number;
  /** A session ends after this much inactivity (default 30 min). */
  sessionTimeoutMs?: number;
  /** decide() gives the fallback after this long (default 1500 ms). */
  decideTimeoutMs?: number;
  /** localStorage key prefix (default "onramp"). */
  storagePrefix?: string;
  /** Add the decision id to Step events of the step a decision chose (default true). */
  echoDecisions?: boolean;
  /** Listen to pagehide / visibilitychange / online (default true). */
  listenToPage?: boolean;
  // Injection points for tests and non-browser hosts.
  storage?: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'>;
  fetch?: typeof fetch;
  sendBeacon?: (url: string, data: Blob | string) => boolean;
  now?: () => number;
  random?: () => Uint8Array;
  setTimeout?: (f: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
}

export interface CallOptions {
  /** The onboarding step this event belongs to (context.onramp.stepId). */
  stepId?: string;
  /** Merged into the event's Segment context. */
  context?: Record<string, unknown>;
}

export interface DecideOptions {
  /** Restrict the answer to these actions (each must be eligible, or the answer is the fallback). */
  candidates?: string[];
  /** Request context (device, locale, ...): features of the decision. */
  context?: Record<string, unknown>;
  /** Give up after this long (default: decideTimeoutMs). */
  timeoutMs?: number;
  /** What `chosen` is when Onramp is slow, down or refuses. */
  fallback?: string | null;
  /** Idempotency key: the same id gives the same draw. */
  decisionId?: string;
}

export interface RankedAction {
  action: string;
  score: number | null;
  probability: number;
}

export interface Decision {
  decisionId: string | null;
  slot: string;
  chosen: string | null;
  ranked: RankedAction[];
  /** True when `chosen` is the caller's fallback. */
  fallback: boolean;
  /** Why the fallback: "timeout", "network", "http_<status>", "no_decide_key", "nothing_eligible". */
  reason: string | null;
  status: number | null;
  propensity?: number | null;
  arm?: string;
  experiment?: string;
  modelVersion?: number;
  policy?: string;
  coldStart?: boolean;
  coldReason?: string | null;
  latencyMs?: number;
}

export type Outcome = 'completed' | 'abandoned' | 'converted';

export interface Stats {
  enqueued: number;
  sent: number;
  dropped: number;
  retries: number;
  batches: number;
  beaconed: number;
  queued: number;
  attempt: number;
  healthy: boolean;
}

export interface OnrampClient {
  readonly version: string;
  readonly anonymousId: string;
  readonly userId: string | null;
  readonly sessionId: string | null;
  readonly queued: number;
  identify(userId: string | null, traits?: Record<string, unknown>, options?: CallOptions): void;
  identify(traits: Record<string, unknown>, options?: CallOptions): void;
  /** Segment's alias: `userId` and `previousId` (default: the current userId, else the
   * anonymousId) are the same user; afterwards `userId` is this client's user id (persisted). */
  alias(userId: string, previousId?: string | null, options?: CallOptions): void;
  alias(userId: string, options: CallOptions): void;
  track(event: string, properties?: Record<string, unknown>, options?: CallOptions): void;
  page(name?: string, properties?: Record<string, unknown>, options?: CallOptions): void;
  decide(slot: string, options?: DecideOptions): Promise<Decision>;
  reportOutcome(decisionId: string, outcome: Outcome, properties?: Record<string, unknown>): void;
  /** Send what is queued; resolves true when the queue is empty, false when a retry is scheduled. */
  flush(): Promise<boolean>;
  /** Forget the user (logout): new anonymousId and session. */
  reset(): void;
  on(kind: 'error' | 'sent' | 'decision', listener: (detail: any) => void): () => void;
  beaconFlush(): number;
  close(): void;
  queuedEvents(): Array<Record<string, unknown>>;
  stats(): Stats;
}

export declare function createClient(options: OnrampOptions): OnrampClient;
export declare function init(options: OnrampOptions): OnrampClient;
export declare const identify: OnrampClient['identify'];
export declare const alias: OnrampClient['alias'];
export declare function track(event: string, properties?: Record<string, unknown>, options?: CallOptions): void;
export declare function page(name?: string, properties?: Record<string, unknown>, options?: CallOptions): void;
export declare function decide(slot: string, options?: DecideOptions): Promise<Decision>;
export declare function reportOutcome(decisionId: string, outcome: Outcome, properties?: Record<string, unknown>): void;
export declare function flush(): Promise<boolean>;
export declare function reset(): void;
export declare function on(kind: 'error' | 'sent' | 'decision', listener: (detail: any) => void): () => void;
export declare function uuid4(random: () => Uint8Array): string;
export declare function backoffMs(
  attempt: number,
  options: { baseMs: number; maxMs: number; retryAfterS?: number | null; jitter?: () => number },
): number;
export declare function parseRetryAfter(value: string | null, nowMs?: number): number | null;
export declare function classifyStatus(status: number): 'done' | 'retry' | 'drop';
