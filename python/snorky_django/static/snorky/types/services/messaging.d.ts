/**
 * Messaging: named participants sending messages to each other.
 *
 * The names this connection registered are registered again after a
 * reconnection. The server frees a dead connection's names only once it
 * notices the death; if the new registration is refused (`"Name already
 * registered"`), the name is dropped and `snorky.restoreFailed` says so.
 */
import { Signal } from "../signal.js";
import type { ParticipantMessage, PushMessage } from "../types.js";
import { RPCService } from "./base.js";
export declare class Messaging extends RPCService {
    /** A message sent to one of this connection's names. */
    readonly participantMessage: Signal<ParticipantMessage>;
    private readonly names;
    /** Registers `name` for this connection. Rejects with `"Name already registered"`, `"Name not allowed"`. */
    registerParticipant(params: {
        name: string;
    }): Promise<null>;
    /** Frees `name`. Rejects with `"Unknown participant"`, `"Invalid participant"`. */
    unregisterParticipant(params: {
        name: string;
    }): Promise<null>;
    /** Every name registered on the server, sorted. */
    listParticipants(params?: object): Promise<string[]>;
    /** Sends `body` (any JSON) from one of this connection's names to `dest`. */
    send(params: {
        sender: string;
        dest: string;
        body: unknown;
    }): Promise<null>;
    /** The names this connection has registered (and registers again after a reconnection). */
    get participants(): string[];
    protected onNotification(message: PushMessage): void;
    protected restore(): void;
}
