namespace py datasets
namespace rs datasets

// A small request, like the RPC benchmark's.
struct Small {
  1: i64 id;
  2: string name;
  3: list<i64> tags;
  4: binary payload;
}

// Severity of a log record.
enum Level {
  Debug = 0,
  Info = 1,
  Warn = 2,
  Error = 3,
}

// One log record: strings and a timestamp.
struct LogRecord {
  1: i64 timestamp_us;
  2: Level level;
  3: string service_;
  4: string message;
  5: map<string, string> attrs;
}

// A batch of log records.
struct LogBatch {
  1: list<LogRecord> records;
}

// A numeric-heavy mesh.
struct Mesh {
  1: list<double> vertices;
  2: list<double> normals;
  3: list<i64> indices;
}

// A deep tree of nested messages.
struct Tree {
  1: i64 value;
  2: string label;
  3: list<Tree> children;
}
