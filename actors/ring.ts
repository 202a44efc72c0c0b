import { murmur3 } from "./murmur3.ts";

/** Virtual nodes per member: enough for each of 3 members to own a third of keys within a few percent. */
export const DEFAULT_VNODES = 512;

/**
 * Consistent-hash ring with virtual nodes. Immutable: a membership change builds a new ring.
 * Built only from the sorted member ids, so every node derives the same owner for the same key.
 */
export class Ring {
  /** Member ids in sorted order. */
  readonly members: readonly string[];
  readonly vnodesPerMember: number;
  /** Equal on two nodes exactly when they computed the same ring. */
  readonly fingerprint: string;
  private readonly points: Uint32Array;
  private readonly owners: Uint16Array;

  constructor(members: Iterable<string>, vnodesPerMember = DEFAULT_VNODES) {
    if (!Number.isInteger(vnodesPerMember) || vnodesPerMember < 1) {
      throw new Error(`Ring requires a positive integer vnodesPerMember, got ${vnodesPerMember}`);
    }
    const sorted = [...new Set(members)].sort();
    if (sorted.length > 0xffff) throw new Error("Ring supports at most 65535 members");
    this.members = sorted;
    this.vnodesPerMember = vnodesPerMember;
    this.fingerprint = `${vnodesPerMember}|${sorted.join(",")}`;
    // point * 2^16 + member index stays below 2^53, so one numeric sort orders by point then member.
    const combined = new Float64Array(sorted.length * vnodesPerMember);
    let n = 0;
    for (let m = 0; m < sorted.length; m++) {
      for (let v = 0; v < vnodesPerMember; v++) {
        combined[n++] = murmur3(`${sorted[m]}#${v}`) * 65536 + m;
      }
    }
    combined.sort();
    this.points = new Uint32Array(n);
    this.owners = new Uint16Array(n);
    for (let i = 0; i < n; i++) {
      const owner = combined[i] % 65536;
      this.owners[i] = owner;
      this.points[i] = (combined[i] - owner) / 65536;
    }
  }

  /** Total virtual nodes on the ring. */
  get size(): number {
    return this.points.length;
  }

  /** The member owning `key`: the first virtual node clockwise from the key's hash; undefined on an empty ring. */
  ownerOf(key: string): string | undefined {
    const points = this.points;
    const n = points.length;
    if (n === 0) return undefined;
    const hash = murmur3(key);
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (points[mid] < hash) lo = mid + 1;
      else hi = mid;
    }
    return this.members[this.owners[lo === n ? 0 : lo]];
  }

  /** True when `nodeId` has virtual nodes on this ring. */
  has(nodeId: string): boolean {
    return this.members.includes(nodeId);
  }
}
