"""Apache Thrift peer for tests/tests/interop.rs: a stock client calling our server, or a stock
server our client calls, over TFramedTransport.

usage: thrift_peer.py client GEN_DIR PORT PROTOCOL [CA_PEM]
       thrift_peer.py server GEN_DIR PORT PROTOCOL
PROTOCOL: binary or compact. GEN_DIR holds `thrift --gen py` output of the Bank service. With
CA_PEM the client speaks TLS (TSSLSocket) to localhost, trusting that CA.
"""

import ssl
import sys

MODE, GEN_DIR, PORT, PROTOCOL = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
CA = sys.argv[5] if len(sys.argv) > 5 else None
sys.path.insert(0, GEN_DIR)

from bank import Bank, ttypes  # noqa: E402
from thrift.protocol import TBinaryProtocol, TCompactProtocol, TMultiplexedProtocol  # noqa: E402
from thrift.server import TServer  # noqa: E402
from thrift.Thrift import TApplicationException, TMessageType  # noqa: E402
from thrift.transport import TSocket, TSSLSocket, TTransport  # noqa: E402


def check(condition, message):
    if not condition:
        print(f"thrift {MODE} {PROTOCOL}: {message}", file=sys.stderr)
        sys.exit(1)


def client():
    if CA:
        context = ssl.create_default_context(cafile=CA)
        socket = TSSLSocket.TSSLSocket("localhost", PORT, ssl_context=context, server_hostname="localhost")
    else:
        socket = TSocket.TSocket("127.0.0.1", PORT)
    transport = TTransport.TFramedTransport(socket)
    protocol = (TCompactProtocol.TCompactProtocol if PROTOCOL == "compact" else TBinaryProtocol.TBinaryProtocol)(
        transport
    )
    bank = Bank.Client(protocol)
    transport.open()
    account = bank.open("ada", -5)
    check(account == ttypes.Account(id=1, owner="ada", balance=-5), f"open returned {account}")
    check(bank.get(1) == account, "get(1) differs from what open returned")
    try:
        bank.get(999)
        check(False, "get(999) did not raise the declared exception")
    except ttypes.NoSuchAccount as e:
        check(e.id == 999, f"exception carries id {e.id}")
    # A method whose declared error is a string: it arrives wrapped in an exception.
    try:
        bank.withdraw(1, 3)
        check(False, "withdraw(1, 3) did not raise the declared exception")
    except ttypes.Error_string as e:
        check(e.value == "balance -5 is less than 3", f"exception carries {e.value!r}")
    check(bank.withdraw(1, -7) == 2, "withdraw(1, -7) did not leave 2")
    # `list` is a word Thrift reserves: the .thrift names the method `list_`.
    check(bank.list_() == [ttypes.Account(id=1, owner="ada", balance=2)], "list_() differs")
    bank.ping()
    # A method the service does not have.
    protocol.writeMessageBegin("nope", TMessageType.CALL, 77)
    protocol.writeStructBegin("nope_args")
    protocol.writeFieldStop()
    protocol.writeStructEnd()
    protocol.writeMessageEnd()
    transport.flush()
    _, kind, seq = protocol.readMessageBegin()
    check(kind == TMessageType.EXCEPTION and seq == 77, f"unknown method answered with type {kind}, seq {seq}")
    error = TApplicationException()
    error.read(protocol)
    protocol.readMessageEnd()
    check(error.type == TApplicationException.UNKNOWN_METHOD, f"unknown method gave {error}")
    # A multiplexed call ("Service:method") is answered under the bare method name, which
    # generated clients in stricter languages (Go) check.
    protocol.writeMessageBegin("Bank:ping", TMessageType.CALL, 78)
    protocol.writeStructBegin("ping_args")
    protocol.writeFieldStop()
    protocol.writeStructEnd()
    protocol.writeMessageEnd()
    transport.flush()
    name, kind, seq = protocol.readMessageBegin()
    check((name, kind, seq) == ("ping", TMessageType.REPLY, 78), f"multiplexed ping answered as {name!r}, {kind}, {seq}")
    Bank.ping_result().read(protocol)
    protocol.readMessageEnd()
    multiplexed = Bank.Client(TMultiplexedProtocol.TMultiplexedProtocol(protocol, "Bank"))
    check(multiplexed.get(1) == ttypes.Account(id=1, owner="ada", balance=2), "multiplexed get(1) differs")
    transport.close()
    print("ok")


class Handler:
    def __init__(self):
        self.accounts = {}

    def open(self, owner, deposit):
        account = ttypes.Account(id=len(self.accounts) + 1, owner=owner, balance=deposit)
        self.accounts[account.id] = account
        return account

    def get(self, id):
        if id not in self.accounts:
            raise ttypes.NoSuchAccount(id=id)
        return self.accounts[id]

    def withdraw(self, id, amount):
        account = self.accounts.get(id)
        if account is None:
            raise ttypes.Error_string(value=f"no account {id}")
        if account.balance < amount:
            raise ttypes.Error_string(value=f"balance {account.balance} is less than {amount}")
        account.balance -= amount
        return account.balance

    def list_(self):
        return list(self.accounts.values())

    def ping(self):
        pass


def server():
    factory = (
        TCompactProtocol.TCompactProtocolFactory() if PROTOCOL == "compact" else TBinaryProtocol.TBinaryProtocolFactory()
    )
    socket = TSocket.TServerSocket(host="127.0.0.1", port=PORT)
    server = TServer.TSimpleServer(Bank.Processor(Handler()), socket, TTransport.TFramedTransportFactory(), factory)
    print("serving", flush=True)
    server.serve()


client() if MODE == "client" else server()
