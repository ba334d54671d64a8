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
import { RPCService } from "./base.js";
/** Payload of `cursors.cursorsChanged`. */
export interface DocumentCursors {
    document: unknown;
    cursors: Cursor[];
}
export declare class Cursors extends RPCService {
    /** Another connection created a cursor in a joined document. */
    readonly cursorAdded: Signal<Cursor>;
    /** Another connection moved a cursor or changed its status. */
    readonly cursorUpdated: Signal<Cursor>;
    /** Another connection's cursor went away. */
    readonly cursorRemoved: Signal<RemovedCursor>;
    /** The remote cursors of a document changed, for whatever reason; carries the whole list. */
    readonly cursorsChanged: Signal<DocumentCursors>;
    private readonly documents;
    private readonly own;
    private nextHandle;
    /** Joins `document`; resolves with the server's `{cursors}`. Rejects with `"Not authenticated"`, `"Already joined"`. */
    join(params: {
        document: unknown;
    }): Promise<{
        cursors: Cursor[];
    }>;
    /** Leaves `document`; the server removes this connection's cursors there. Rejects with `"Not joined"`. */
    leave(params: {
        document: unknown;
    }): Promise<null>;
    /**
     * Creates a cursor in a joined document and resolves with it: an
     * {@link OwnCursor} with its `publicHandle`. `privateHandle` is chosen for
     * you unless given. Rejects with `"Not joined"`, `"Reused handle"`, `"Too many cursors"`.
     */
    createCursor(params: {
        document: unknown;
        position: unknown;
        status: unknown;
        privateHandle?: number;
    }): Promise<OwnCursor>;
    /** Moves a cursor or changes its status: `newData` has `position` and/or `status`. Rejects with `"No such cursor"`. */
    updateCursor(params: {
        privateHandle: number;
        newData: {
            position?: unknown;
            status?: unknown;
        };
    }): Promise<null>;
    /** Removes one of this connection's cursors. Rejects with `"No such cursor"`. */
    removeCursor(params: {
        privateHandle: number;
    }): Promise<null>;
    /** The other connections' cursors in a joined document, or `[]`. */
    getCursors(document: unknown): Cursor[];
    /** This connection's cursors, in one document or in all. */
    getOwnCursors(document?: unknown): OwnCursor[];
    /** The documents this client has joined (and rejoins after a reconnection). */
    get joinedDocuments(): unknown[];
    protected onNotification(message: PushMessage): void;
    protected restore(): void;
    private replaceCursors;
    private freeHandle;
}
