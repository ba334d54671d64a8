/**
 * Chat: channels with members, messages, presence and read receipts.
 *
 * The members of every joined channel are kept up to date from presence
 * messages; after a reconnection each channel is joined again and its member
 * list replaced by the server's.
 */

import { Signal } from "../signal.js";
import type { ChatMembers, ChatMessage, ChatPresence, ChatRead, Identity, PushMessage } from "../types.js";
import { afterSettled, jsonKey, RPCService } from "./base.js";

interface Room {
  channel: unknown;
  members: Identity[];
}

export class Chat extends RPCService {
  /** A message sent to a joined channel (this connection's own included). */
  readonly messageReceived = new Signal<ChatMessage>();
  /** Someone joined or left a joined channel. Members are updated before it is dispatched. */
  readonly presenceReceived = new Signal<ChatPresence>();
  /** Another connection of this user read a channel. */
  readonly readReceived = new Signal<ChatRead>();
  /** The member list of a channel changed (join, presence, rejoin, leave). */
  readonly membersChanged = new Signal<ChatMembers>();

  private readonly rooms = new Map<string, Room>();

  /** Joins `channel`; resolves with `{members}`. Rejects with `"Not authenticated"`, `"Already joined"`. */
  join(params: { channel: unknown }): Promise<{ members: Identity[] }> {
    return this.call<{ members: Identity[] }>("join", params).then((data) => {
      this.setMembers(params.channel, data?.members ?? []);
      return data;
    });
  }

  /** Leaves `channel`. Rejects with `"Not joined"`. */
  leave(params: { channel: unknown }): Promise<null> {
    return afterSettled(this.call<null>("leave", params), () => {
      if (this.rooms.delete(jsonKey(params.channel))) this.membersChanged.dispatch({ channel: params.channel, members: [] });
    });
  }

  /** Sends `body` (any JSON) to `channel`. Rejects with `"Not joined"`. */
  send(params: { channel: unknown; body: unknown }): Promise<null> {
    return this.call<null>("send", params);
  }

  /** Tells this user's other connections that `channel` was read. */
  read(params: { channel: unknown }): Promise<null> {
    return this.call<null>("read", params);
  }

  /** The members of a joined channel (a copy), or `[]`. */
  getMembers(channel: unknown): Identity[] {
    return [...(this.rooms.get(jsonKey(channel))?.members ?? [])];
  }

  /** The channels this client has joined (and rejoins after a reconnection). */
  get channels(): unknown[] {
    return [...this.rooms.values()].map((room) => room.channel);
  }

  protected override onNotification(message: PushMessage): void {
    switch (message.type) {
      case "message":
        this.messageReceived.dispatch(message as unknown as ChatMessage);
        break;
      case "presence": {
        const presence = message as unknown as ChatPresence;
        const room = this.rooms.get(jsonKey(presence.channel));
        if (room) {
          const others = room.members.filter((member) => member !== presence.from);
          this.setMembers(room.channel, presence.status === "joined" ? [...others, presence.from] : others);
        }
        this.presenceReceived.dispatch(presence);
        break;
      }
      case "read":
        this.readReceived.dispatch(message as unknown as ChatRead);
        break;
    }
  }

  protected override restore(): void {
    for (const [key, room] of this.rooms) {
      void this.restoreCall<{ members: Identity[] }>("join", { channel: room.channel }, () => {
        this.rooms.delete(key);
        this.membersChanged.dispatch({ channel: room.channel, members: [] });
      }).then((data) => {
        if (data !== undefined) this.setMembers(room.channel, data?.members ?? []);
      });
    }
  }

  private setMembers(channel: unknown, members: Identity[]): void {
    this.rooms.set(jsonKey(channel), { channel, members: [...members] });
    this.membersChanged.dispatch({ channel, members: [...members] });
  }
}
