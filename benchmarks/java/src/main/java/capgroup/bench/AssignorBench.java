package capgroup.bench;

import java.io.BufferedReader;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import org.apache.kafka.clients.consumer.ConsumerPartitionAssignor.Assignment;
import org.apache.kafka.clients.consumer.ConsumerPartitionAssignor.GroupAssignment;
import org.apache.kafka.clients.consumer.ConsumerPartitionAssignor.GroupSubscription;
import org.apache.kafka.clients.consumer.ConsumerPartitionAssignor.Subscription;
import org.apache.kafka.clients.consumer.CooperativeStickyAssignor;
import org.apache.kafka.clients.consumer.internals.ConsumerProtocol;
import org.apache.kafka.common.Cluster;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;

/**
 * Times Kafka's CooperativeStickyAssignor on one group written by benchmarks/bench_assignor.py.
 *
 * <p>Usage: {@code java -jar assignor-bench.jar [--warmup W] [--runs N] CASE_FILE}. One case per
 * JVM, so that the first call is what a leader in a fresh JVM sees. Prints one JSON line:
 *
 * <ul>
 *   <li>{@code first_ms}: the first {@code assign(Cluster, GroupSubscription)} call of the JVM;
 *   <li>{@code median_ms}, {@code runs_ms}: N timed calls after W more warm-up calls;
 *   <li>{@code leader_median_ms}: the warm leader path as ConsumerCoordinator runs it: decode
 *       every member's subscription bytes, assign, encode every assignment;
 *   <li>{@code moved}, {@code withheld}, {@code min}, {@code max}, {@code assigned}: the result
 *       of the first call against the owners in the input, to check the balance matches.
 * </ul>
 *
 * <p>Input (text, whitespace separated): {@code capgroup-assignor-bench 1}, then {@code topics T}
 * and T lines {@code NAME PARTITIONS}, then {@code members M} and M lines {@code MEMBER_ID
 * GENERATION K} followed by K owned partitions as {@code TOPIC_INDEX:PARTITION}. Generation -1
 * means a member that owns nothing (Kafka's DEFAULT_GENERATION).
 */
public final class AssignorBench {
  private AssignorBench() {}

  /** The group as the leader sees it, built once outside every timing. */
  private record Group(
      Cluster cluster,
      GroupSubscription subscriptions,
      Map<String, ByteBuffer> encoded,
      Map<TopicPartition, String> owners,
      int partitions) {}

  public static void main(String[] args) throws IOException {
    int warmup = 5;
    double warmupSeconds = 0;
    int runs = 5;
    Path file = null;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--warmup" -> warmup = Integer.parseInt(args[++i]);
        case "--warmup-seconds" -> warmupSeconds = Double.parseDouble(args[++i]);
        case "--runs" -> runs = Integer.parseInt(args[++i]);
        default -> file = Path.of(args[i]);
      }
    }
    if (file == null) {
      System.err.println(
          "usage: AssignorBench [--warmup W] [--warmup-seconds S] [--runs N] CASE_FILE");
      System.exit(2);
    }
    Group group = read(file);
    CooperativeStickyAssignor assignor = new CooperativeStickyAssignor();

    // The first call of the JVM: class loading, interpreter, no JIT yet.
    long start = System.nanoTime();
    GroupAssignment first = assignor.assign(group.cluster(), group.subscriptions());
    double firstMs = (System.nanoTime() - start) / 1e6;

    // Warm until both the call count and the time are reached: a few calls leave a small
    // group's assign() to the interpreter and C1 (10k partitions: 5.9 ms after 5 calls, 1.25
    // ms after 200), so the time bound is what makes the figure a warm JIT's.
    int warmupCalls = warm(warmup, warmupSeconds, () -> assignor.assign(group.cluster(), group.subscriptions()));
    warm(warmup, warmupSeconds, () -> leaderPath(assignor, group));
    double[] timed = new double[runs];
    for (int i = 0; i < runs; i++) {
      // The Python side runs gc.collect() before each timed call; this is the same courtesy.
      System.gc();
      start = System.nanoTime();
      assignor.assign(group.cluster(), group.subscriptions());
      timed[i] = (System.nanoTime() - start) / 1e6;
    }
    double[] leader = new double[runs];
    for (int i = 0; i < runs; i++) {
      System.gc();
      start = System.nanoTime();
      leaderPath(assignor, group);
      leader[i] = (System.nanoTime() - start) / 1e6;
    }

    StringBuilder out = new StringBuilder("{");
    field(out, "kafka_clients", quote(kafkaVersion())).append(',');
    field(out, "partitions", group.partitions()).append(',');
    field(out, "members", group.subscriptions().groupSubscription().size()).append(',');
    field(out, "first_ms", firstMs).append(',');
    field(out, "median_ms", median(timed)).append(',');
    field(out, "runs_ms", Arrays.toString(round(timed))).append(',');
    field(out, "leader_median_ms", median(leader)).append(',');
    field(out, "warmup_calls", warmupCalls).append(',');
    check(out, first, group);
    System.out.println(out.append('}'));
  }

  /** Run {@code call} at least {@code calls} times and for at least {@code seconds}; the count. */
  private static int warm(int calls, double seconds, Runnable call) {
    long until = System.nanoTime() + (long) (seconds * 1e9);
    int done = 0;
    while (done < calls || System.nanoTime() < until) {
      call.run();
      done++;
    }
    return done;
  }

  /** What ConsumerCoordinator does around assign() as leader: decode and encode included. */
  private static Map<String, ByteBuffer> leaderPath(CooperativeStickyAssignor assignor, Group g) {
    Map<String, Subscription> decoded = new HashMap<>();
    for (Map.Entry<String, ByteBuffer> e : g.encoded().entrySet()) {
      decoded.put(e.getKey(), ConsumerProtocol.deserializeSubscription(e.getValue().duplicate()));
    }
    GroupAssignment result = assignor.assign(g.cluster(), new GroupSubscription(decoded));
    Map<String, ByteBuffer> out = new HashMap<>();
    for (Map.Entry<String, Assignment> e : result.groupAssignment().entrySet()) {
      out.put(e.getKey(), ConsumerProtocol.serializeAssignment(e.getValue()));
    }
    return out;
  }

  /** Partitions moved against the input owners, withheld ones, and the spread per member. */
  private static void check(StringBuilder out, GroupAssignment result, Group group) {
    Map<TopicPartition, String> owner = new HashMap<>(group.partitions() * 2);
    int min = Integer.MAX_VALUE;
    int max = 0;
    for (Map.Entry<String, Assignment> e : result.groupAssignment().entrySet()) {
      List<TopicPartition> tps = e.getValue().partitions();
      min = Math.min(min, tps.size());
      max = Math.max(max, tps.size());
      for (TopicPartition tp : tps) {
        owner.put(tp, e.getKey());
      }
    }
    // Moved: the new holder is not the previous owner (a partition nobody owned counts when it
    // is assigned, as capgroup's Plan.moved counts it). Withheld: revoked from a live owner and
    // given to nobody this round (the cooperative protocol's first phase).
    int moved = 0;
    int withheld = 0;
    for (Map.Entry<TopicPartition, String> e : group.owners().entrySet()) {
      String now = owner.get(e.getKey());
      if (now == null) {
        withheld++;
        moved++;
      } else if (!now.equals(e.getValue())) {
        moved++;
      }
    }
    for (TopicPartition tp : owner.keySet()) {
      if (!group.owners().containsKey(tp)) {
        moved++;
      }
    }
    field(out, "assigned", owner.size()).append(',');
    field(out, "moved", moved).append(',');
    field(out, "withheld", withheld).append(',');
    field(out, "min", min == Integer.MAX_VALUE ? 0 : min).append(',');
    field(out, "max", max);
  }

  private static Group read(Path file) throws IOException {
    try (BufferedReader in = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
      expect(in.readLine(), "capgroup-assignor-bench 1");
      int nTopics = Integer.parseInt(header(in.readLine(), "topics"));
      List<String> topics = new ArrayList<>(nTopics);
      List<PartitionInfo> infos = new ArrayList<>();
      Node node = new Node(0, "localhost", 9092);
      Node[] replicas = {node};
      for (int t = 0; t < nTopics; t++) {
        String[] parts = in.readLine().split(" ");
        topics.add(parts[0]);
        int count = Integer.parseInt(parts[1]);
        for (int p = 0; p < count; p++) {
          infos.add(new PartitionInfo(parts[0], p, node, replicas, replicas));
        }
      }
      int nMembers = Integer.parseInt(header(in.readLine(), "members"));
      Map<String, Subscription> subscriptions = new LinkedHashMap<>();
      Map<String, ByteBuffer> encoded = new LinkedHashMap<>();
      Map<TopicPartition, String> owners = new HashMap<>();
      List<String> subscribed = Collections.unmodifiableList(topics);
      for (int m = 0; m < nMembers; m++) {
        String[] parts = in.readLine().split(" ");
        String memberId = parts[0];
        int generation = Integer.parseInt(parts[1]);
        int k = Integer.parseInt(parts[2]);
        List<TopicPartition> owned = new ArrayList<>(k);
        for (int i = 0; i < k; i++) {
          String token = parts[3 + i];
          int colon = token.indexOf(':');
          TopicPartition tp =
              new TopicPartition(
                  topics.get(Integer.parseInt(token, 0, colon, 10)),
                  Integer.parseInt(token, colon + 1, token.length(), 10));
          owned.add(tp);
          owners.put(tp, memberId);
        }
        // userData as CooperativeStickyAssignor.subscriptionUserData writes it: the generation.
        ByteBuffer userData = ByteBuffer.allocate(4).putInt(0, generation);
        Subscription sub =
            new Subscription(subscribed, userData, owned, generation, Optional.empty());
        subscriptions.put(memberId, sub);
        encoded.put(memberId, ConsumerProtocol.serializeSubscription(sub));
      }
      Cluster cluster =
          new Cluster("bench", List.of(node), infos, Collections.emptySet(), Collections.emptySet());
      return new Group(
          cluster, new GroupSubscription(subscriptions), encoded, owners, infos.size());
    }
  }

  private static void expect(String line, String want) {
    if (!want.equals(line)) {
      throw new IllegalArgumentException("expected '" + want + "', got '" + line + "'");
    }
  }

  private static String header(String line, String word) {
    String[] parts = line.split(" ");
    expect(parts[0], word);
    return parts[1];
  }

  private static String kafkaVersion() {
    String v = CooperativeStickyAssignor.class.getPackage().getImplementationVersion();
    return v == null ? org.apache.kafka.common.utils.AppInfoParser.getVersion() : v;
  }

  private static double median(double[] values) {
    double[] sorted = values.clone();
    Arrays.sort(sorted);
    int n = sorted.length;
    return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  }

  private static double[] round(double[] values) {
    double[] out = new double[values.length];
    for (int i = 0; i < values.length; i++) {
      out[i] = Math.round(values[i] * 1000) / 1000.0;
    }
    return out;
  }

  private static String quote(String s) {
    return '"' + s.replace("\\", "\\\\").replace("\"", "\\\"") + '"';
  }

  private static StringBuilder field(StringBuilder out, String name, Object value) {
    Object shown = value instanceof Double d ? String.format(Locale.ROOT, "%.3f", d) : value;
    return out.append('"').append(name).append("\":").append(shown);
  }
}
