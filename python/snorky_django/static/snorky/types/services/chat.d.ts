/**
 * Chat: channels with members, messages, presence and read receipts.
 *
 * The members of every joined channel are kept up to date from presence
 * messages; after a reconnection each channel is joined again and its member
 * list replaced by the server's.
 */
import { Signal } from "../signal.js";
import type { ChatMembers, ChatMessage, ChatPresence, ChatRead, Identity, PushMessage } from "../types.js";
import { RPCService } from "./base.js";
export declare class Chat extends RPCService {
    /** A message sent to a joined channel (this connection's own included). */
    readonly messageReceived: Signal<ChatMessage>;
    /** Someone joined or left a joined channel. Members are updated before it is dispatched. */
    readonly presenceReceived: Signal<ChatPresence>;
    /** Another connection of this user read a channel. */
    readonly readReceived: Signal<ChatRead>;
    /** The member list of a channel changed (join, presence, rejoin, leave). */
    readonly membersChanged: Signal<ChatMembers>;
    private readonly rooms;
    /** Joins `channel`; resolves with `{members}`. Rejects with `"Not authenticated"`, `"Already joined"`. */
    join(params: {
        channel: unknown;
    }): Promise<{
        members: Identity[];
    }>;
    /** Leaves `channel`. Rejects with `"Not joined"`. */
    leave(params: {
        channel: unknown;
    }): Promise<null>;
    /** Sends `body` (any JSON) to `channel`. Rejects with `"Not joined"`. */
    send(params: {
        channel: unknown;
        body: unknown;
    }): Promise<null>;
    /** Tells this user's other connections that `channel` was read. */
    read(params: {
        channel: unknown;
    }): Promise<null>;
    /** The members of a joined channel (a copy), or `[]`. */
    getMembers(channel: unknown): Identity[];
    /** The channels this client has joined (and rejoins after a reconnection). */
    get channels(): unknown[];
    protected onNotification(message: PushMessage): void;
    protected restore(): void;
    private setMembers;
}
