// The partition Apache Kafka's Java producer gives a keyed record: BuiltInPartitioner.partitionForKey,
// i.e. Utils.toPositive(Utils.murmur2(key)) % numPartitions (clients/src/main/java/org/apache/kafka/
// common/utils/Utils.java), written out here so the test needs no Kafka jar: an oracle independent
// of librdkafka and of processors/kafka/partitioner.py.
//
// stdin: one key per line, as hex; args: partition counts. stdout: per key, its partition for each count.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;

public final class KafkaPartition {
    static int murmur2(byte[] data) {
        final int m = 0x5bd1e995;
        final int r = 24;
        int length = data.length;
        int h = 0x9747b28c ^ length;
        for (int i = 0; i + 4 <= length; i += 4) {
            int k = (data[i] & 0xff) | ((data[i + 1] & 0xff) << 8) | ((data[i + 2] & 0xff) << 16)
                | ((data[i + 3] & 0xff) << 24);
            k *= m;
            k ^= k >>> r;
            k *= m;
            h *= m;
            h ^= k;
        }
        int tail = length & ~3;
        switch (length % 4) {
            case 3:
                h ^= (data[tail + 2] & 0xff) << 16;
                // fall through
            case 2:
                h ^= (data[tail + 1] & 0xff) << 8;
                // fall through
            case 1:
                h ^= data[tail] & 0xff;
                h *= m;
                break;
            default:
                break;
        }
        h ^= h >>> 13;
        h *= m;
        h ^= h >>> 15;
        return h;
    }

    static int toPositive(int number) {
        return number & 0x7fffffff;
    }

    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        StringBuilder out = new StringBuilder();
        for (String line; (line = in.readLine()) != null; ) {
            byte[] key = HexFormat.of().parseHex(line.trim());
            for (int i = 0; i < args.length; i++) {
                out.append(i == 0 ? "" : " ").append(toPositive(murmur2(key)) % Integer.parseInt(args[i]));
            }
            out.append('\n');
        }
        System.out.print(out);
    }
}
