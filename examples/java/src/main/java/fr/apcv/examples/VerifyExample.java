package fr.apcv.examples;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import fr.apcv.verify.v1.ReaderContext;
import fr.apcv.verify.v1.Scan;
import fr.apcv.verify.v1.Verdict;
import fr.apcv.verify.v1.VerifierServiceGrpc;
import fr.apcv.verify.v1.VerifyRequest;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.protobuf.StatusProto;
import io.grpc.util.AdvancedTlsX509KeyManager;
import io.grpc.util.AdvancedTlsX509TrustManager;
import java.io.File;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/**
 * A hospital system's client of the apcv.verify.v1 contract in Java, on the message classes
 * and the VerifierServiceGrpc stub that protoc and grpc-java's plugin generate from protos/ in
 * the Maven build (docs/integration.md "Java"). It verifies one scan, reads the details of a
 * call error, and resends a scan with its request_id.
 *
 * <pre>APCV_TARGET=127.0.0.1:50051 APCV_QR="$QR" java -cp … fr.apcv.examples.VerifyExample</pre>
 *
 * <p>With APCV_TLS_CA, APCV_TLS_CERT and APCV_TLS_KEY (PEM files) it speaks mTLS to the server.
 */
public final class VerifyExample {
  /**
   * Lets grpc-java resend a call that failed with UNAVAILABLE, CANCELLED by the server (past
   * its capacity it ends the calls it cannot take so) or RESOURCE_EXHAUSTED (too many calls in
   * progress), unchanged (so with the same request_id), with exponential backoff; nothing else
   * is retried. A MESSAGE_TOO_LARGE refusal, which the same request would meet again, carries
   * gRPC's server pushback "do not retry" and is not resent.
   */
  private static final Map<String, ?> SERVICE_CONFIG = Map.of("methodConfig", List.of(Map.of(
      "name", List.of(Map.of("service", "apcv.verify.v1.VerifierService", "method", "Verify")),
      "retryPolicy", Map.of(
          "maxAttempts", 5.0, "initialBackoff", "0.2s", "maxBackoff", "10s",
          "backoffMultiplier", 2.0,
          "retryableStatusCodes", List.of("UNAVAILABLE", "CANCELLED", "RESOURCE_EXHAUSTED")))));

  private static final SecureRandom RANDOM = new SecureRandom();

  /** Looks at the mTLS files for a renewal; daemon threads, so as not to hold the exit. */
  private static final ScheduledExecutorService RENEWALS =
      Executors.newSingleThreadScheduledExecutor(task -> {
        Thread thread = new Thread(task, "tls-renewals");
        thread.setDaemon(true);
        return thread;
      });

  public static void main(String[] args) throws Exception {
    ManagedChannel channel = Grpc.newChannelBuilder(
            System.getenv("APCV_TARGET"), channelCredentials())
        .defaultServiceConfig(SERVICE_CONFIG)
        .enableRetry()
        .build();
    try {
      String qr = System.getenv("APCV_QR").split("\n")[0];

      // 1. Verify a scan: a rejected presentation is a verdict, not an error.
      Scan scan = Scan.newBuilder()
          .setRequestId(newRequestId()) // kept for any resend of this scan
          .setQrText(qr)
          .setReader(ReaderContext.newBuilder().setReaderId("admissions-desk-3"))
          .build();
      Verdict first = verify(channel, scan);
      System.out.println("verdict: " + first.getDecision() + " " + first.getReason()
          + " duplicate: " + first.getDuplicate());

      // 2. A call error: its status, then ErrorInfo.reason to branch on and BadRequest's fields.
      Scan unnamed = scan.toBuilder()
          .setRequestId(newRequestId())
          .setReader(ReaderContext.getDefaultInstance()) // no reader_id
          .build();
      try {
        verify(channel, unnamed);
        throw new IllegalStateException("a scan without reader_id was answered");
      } catch (StatusRuntimeException error) {
        System.out.print(describe(error));
      }

      // 3. The answer was lost (a timeout, a crash): resend the same scan, same request_id.
      Verdict again = verify(channel, scan);
      if (again.getDecision() != first.getDecision() || again.getReason() != first.getReason()) {
        throw new IllegalStateException("the resend was answered " + again.getDecision() + " "
            + again.getReason() + ", the first send " + first.getDecision() + " "
            + first.getReason());
      }
      // resent: the server gave back the answer of the first send (answer recovery), which
      // was already counted; do not count (or bill) it twice.
      if (!again.getResent()) {
        throw new IllegalStateException(
            "the resend was verified again instead of answered from the first send");
      }
      System.out.println("again: " + again.getDecision() + " " + again.getReason()
          + " resent: " + again.getResent());
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  /**
   * mTLS with this system's client certificate, whose subject CN is its entry in the server's
   * [[callers]] table, when APCV_TLS_CA names the server's CA bundle; plaintext otherwise (a
   * test server). The files are read again every minute once they change: a certificate
   * renewed on disk (before it expires, or after its CA revoked the old one) and a new CA
   * bundle are used from the next connection on.
   */
  static ChannelCredentials channelCredentials() throws Exception {
    String ca = System.getenv("APCV_TLS_CA");
    if (ca == null || ca.isEmpty()) {
      return InsecureChannelCredentials.create();
    }
    AdvancedTlsX509KeyManager identity = new AdvancedTlsX509KeyManager();
    identity.updateIdentityCredentials(new File(System.getenv("APCV_TLS_CERT")),
        new File(System.getenv("APCV_TLS_KEY")), 1, TimeUnit.MINUTES, RENEWALS);
    AdvancedTlsX509TrustManager trust = AdvancedTlsX509TrustManager.newBuilder()
        .setVerification(
            AdvancedTlsX509TrustManager.Verification.CERTIFICATE_AND_HOST_NAME_VERIFICATION)
        .build();
    trust.updateTrustCredentials(new File(ca), 1, TimeUnit.MINUTES, RENEWALS);
    return TlsChannelCredentials.newBuilder().keyManager(identity).trustManager(trust).build();
  }

  /** One Verify call with a 10 s deadline, retries included. */
  static Verdict verify(Channel channel, Scan scan) {
    VerifyRequest request = VerifyRequest.newBuilder().setScan(scan).build();
    return VerifierServiceGrpc.newBlockingStub(channel)
        .withDeadlineAfter(10, TimeUnit.SECONDS)
        .verify(request)
        .getVerdict();
  }

  /** A call error's google.rpc.Status details (the v1 contract's error model). */
  static String describe(StatusRuntimeException error) throws InvalidProtocolBufferException {
    StringBuilder text = new StringBuilder("error: " + error.getStatus().getCode() + "\n");
    com.google.rpc.Status status = StatusProto.fromThrowable(error);
    List<Any> details = status == null ? List.of() : status.getDetailsList();
    for (Any detail : details) {
      if (detail.is(ErrorInfo.class)) { // domain "apcv.verify.v1", a stable reason
        ErrorInfo info = detail.unpack(ErrorInfo.class);
        text.append("reason: ").append(info.getDomain()).append(' ').append(info.getReason())
            .append('\n');
      } else if (detail.is(BadRequest.class)) { // INVALID_ARGUMENT: which fields are wrong
        for (BadRequest.FieldViolation violation :
            detail.unpack(BadRequest.class).getFieldViolationsList()) {
          text.append("field: ").append(violation.getField()).append(' ')
              .append(violation.getReason()).append('\n');
        }
      }
    }
    return text.toString();
  }

  /** A random id: unique per scan, reused only by a resend of that scan. */
  static String newRequestId() {
    byte[] id = new byte[16];
    RANDOM.nextBytes(id);
    return HexFormat.of().formatHex(id);
  }
}
