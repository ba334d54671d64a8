/**
 * Cursors: shared pointers in documents (collaborative editing).
 *
 * For every joined document the client keeps the other connections' cursors
 * up to date from the server's pushes, and keeps this connection's own
 * cursors. After a reconnection it joins each document again, replaces the
 * remote cursors with the server's list, and recreates its own cursors with
 * the same private handles (their public handles change).
 */

import { Signal } from "../signal.js";
import type { Cursor, OwnCursor, PushMessage, RemovedCursor } from "../types.js";
import { afterSettled, jsonKey, RPCService } from "./base.js";

interface JoinedDocument {
  document: unknown;
  /** Remote cursors by public handle. */
  cursors: Map<number, Cursor>;
}

/** Payload of `cursors.cursorsChanged`. */
export interface DocumentCursors {
  document: unknown;
  cursors: Cursor[];
}

export class Cursors extends RPCService {
  /** Another connection created a cursor in a joined document. */
  readonly cursorAdded = new Signal<Cursor>();
  /** Another connection moved a cursor or changed its status. */
  readonly cursorUpdated = new Signal<Cursor>();
  /** Another connection's cursor went away. */
  readonly cursorRemoved = new Signal<RemovedCursor>();
  /** The remote cursors of a document changed, for whatever reason; carries the whole list. */
  readonly cursorsChanged = new Signal<DocumentCursors>();

  private readonly documents = new Map<string, JoinedDocument>();
  private readonly own = new Map<number, OwnCursor>();
  private nextHandle = 0;

  /** Joins `document`; resolves with the server's `{cursors}`. Rejects with `"Not authenticated"`, `"Already joined"`. */
  join(params: { document: unknown }): Promise<{ cursors: Cursor[] }> {
    return this.call<{ cursors: Cursor[] }>("join", params).then((data) => {
      this.replaceCursors(params.document, data?.cursors ?? []);
      return data;
    });
  }

  /** Leaves `document`; the server removes this connection's cursors there. Rejects with `"Not joined"`. */
  leave(params: { document: unknown }): Promise<null> {
    return afterSettled(this.call<null>("leave", params), () => {
      const key = jsonKey(params.document);
      for (const cursor of this.own.values()) {
        if (jsonKey(cursor.document) === key) this.own.delete(cursor.privateHandle);
      }
      if (this.documents.delete(key)) this.cursorsChanged.dispatch({ document: params.document, cursors: [] });
    });
  }

  /**
   * Creates a cursor in a joined document and resolves with it: an
   * {@link OwnCursor} with its `publicHandle`. `privateHandle` is chosen for
   * you unless given. Rejects with `"Not joined"`, `"Reused handle"`, `"Too many cursors"`.
   */
  createCursor(params: { document: unknown; position: unknown; status: unknown; privateHandle?: number }): Promise<OwnCursor> {
    const privateHandle = params.privateHandle ?? this.freeHandle();
    const { document, position, status } = params;
    return this.call<number>("createCursor", { privateHandle, document, position, status }).then((publicHandle) => {
      const cursor: OwnCursor = { privateHandle, publicHandle, document, position, status };
      this.own.set(privateHandle, cursor);
      return cursor;
    });
  }

  /** Moves a cursor or changes its status: `newData` has `position` and/or `status`. Rejects with `"No such cursor"`. */
  updateCursor(params: { privateHandle: number; newData: { position?: unknown; status?: unknown } }): Promise<null> {
    // Applied locally at once, so that a reconnection recreates the cursor where it was last put.
    const cursor = this.own.get(params.privateHandle);
    if (cursor) {
      // Keys left undefined are dropped by JSON.stringify, so the server keeps those values too.
      if (params.newData.position !== undefined) cursor.position = params.newData.position;
      if (params.newData.status !== undefined) cursor.status = params.newData.status;
    }
    return this.call<null>("updateCursor", params);
  }

  /** Removes one of this connection's cursors. Rejects with `"No such cursor"`. */
  removeCursor(params: { privateHandle: number }): Promise<null> {
    return afterSettled(this.call<null>("removeCursor", params), () => {
      this.own.delete(params.privateHandle);
    });
  }

  /** The other connections' cursors in a joined document, or `[]`. */
  getCursors(document: unknown): Cursor[] {
    return [...(this.documents.get(jsonKey(document))?.cursors.values() ?? [])];
  }

  /** This connection's cursors, in one document or in all. */
  getOwnCursors(document?: unknown): OwnCursor[] {
    const all = [...this.own.values()];
    if (document === undefined) return all;
    const key = jsonKey(document);
    return all.filter((cursor) => jsonKey(cursor.document) === key);
  }

  /** The documents this client has joined (and rejoins after a reconnection). */
  get joinedDocuments(): unknown[] {
    return [...this.documents.values()].map((joined) => joined.document);
  }

  protected override onNotification(message: PushMessage): void {
    const cursor = message["cursor"] as Cursor | undefined;
    if (!cursor || typeof cursor !== "object") return;
    const joined = this.documents.get(jsonKey(cursor.document));
    if (!joined) return;
    switch (message.type) {
      case "cursorAdded":
        joined.cursors.set(cursor.publicHandle, cursor);
        this.cursorAdded.dispatch(cursor);
        break;
      case "cursorUpdated":
        joined.cursors.set(cursor.publicHandle, cursor);
        this.cursorUpdated.dispatch(cursor);
        break;
      case "cursorRemoved":
        joined.cursors.delete(cursor.publicHandle);
        this.cursorRemoved.dispatch(cursor);
        break;
      default:
        return;
    }
    this.cursorsChanged.dispatch({ document: joined.document, cursors: [...joined.cursors.values()] });
  }

  protected override restore(): void {
    for (const [key, joined] of this.documents) {
      const { document } = joined;
      void this.restoreCall<{ cursors: Cursor[] }>("join", { document }, () => {
        this.documents.delete(key);
        this.cursorsChanged.dispatch({ document, cursors: [] });
      }).then((data) => {
        if (data === undefined) return;
        const cursors = data?.cursors ?? [];
        // Public handles may be reused by a restarted server: announce the old
        // cursors as removed and the current ones as added.
        for (const old of joined.cursors.values()) {
          this.cursorRemoved.dispatch({ publicHandle: old.publicHandle, document: old.document });
        }
        for (const cursor of cursors) this.cursorAdded.dispatch(cursor);
        this.replaceCursors(document, cursors);
      });

      // Sent right after the join: the server answers in order, so the join is in place.
      for (const cursor of this.own.values()) {
        if (jsonKey(cursor.document) !== key) continue;
        cursor.publicHandle = null;
        const { privateHandle, position, status } = cursor;
        void this.restoreCall<number>("createCursor", { privateHandle, document, position, status }, () => {
          this.own.delete(privateHandle);
        }).then((publicHandle) => {
          if (publicHandle !== undefined) cursor.publicHandle = publicHandle;
        });
      }
    }
  }

  private replaceCursors(document: unknown, cursors: Cursor[]): void {
    this.documents.set(jsonKey(document), {
      document,
      cursors: new Map(cursors.map((cursor) => [cursor.publicHandle, cursor])),
    });
    this.cursorsChanged.dispatch({ document, cursors: [...cursors] });
  }

  private freeHandle(): number {
    while (this.own.has(this.nextHandle)) this.nextHandle++;
    return this.nextHandle++;
  }
}
