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
import { afterSettled, RPCService } from "./base.js";

export class Messaging extends RPCService {
  /** A message sent to one of this connection's names. */
  readonly participantMessage = new Signal<ParticipantMessage>();

  private readonly names = new Set<string>();

  /** Registers `name` for this connection. Rejects with `"Name already registered"`, `"Name not allowed"`. */
  registerParticipant(params: { name: string }): Promise<null> {
    return this.call<null>("registerParticipant", params).then((data) => {
      this.names.add(params.name);
      return data;
    });
  }

  /** Frees `name`. Rejects with `"Unknown participant"`, `"Invalid participant"`. */
  unregisterParticipant(params: { name: string }): Promise<null> {
    return afterSettled(this.call<null>("unregisterParticipant", params), () => {
      this.names.delete(params.name);
    });
  }

  /** Every name registered on the server, sorted. */
  listParticipants(params: object = {}): Promise<string[]> {
    return this.call<string[]>("listParticipants", params);
  }

  /** Sends `body` (any JSON) from one of this connection's names to `dest`. */
  send(params: { sender: string; dest: string; body: unknown }): Promise<null> {
    return this.call<null>("send", params);
  }

  /** The names this connection has registered (and registers again after a reconnection). */
  get participants(): string[] {
    return [...this.names];
  }

  protected override onNotification(message: PushMessage): void {
    if (message.type === "message") this.participantMessage.dispatch(message as unknown as ParticipantMessage);
  }

  protected override restore(): void {
    for (const name of this.names) {
      void this.restoreCall("registerParticipant", { name }, () => this.names.delete(name));
    }
  }
}
