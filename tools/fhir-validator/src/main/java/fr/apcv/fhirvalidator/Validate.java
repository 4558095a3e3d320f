package fr.apcv.fhirvalidator;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;

/**
 * Validates FHIR R4 JSON resources with the HAPI FHIR instance validator, offline, against the
 * base R4 specification only (docs/fhir.md "Validation").
 *
 * <p>Usage: {@code Validate PATH...}, each PATH a {@code .json} file or a directory whose
 * {@code *.json} files are validated in name order, all in this one JVM (the validator's start-up
 * is most of the cost). Every message is printed on stdout as one tab-separated line: {@code file,
 * severity, location, message id, message}; then {@code #done <files> <messages>}. The exit status
 * is 0 when the files were read and validated, whatever the messages say (the caller judges them),
 * and 2 on a usage or I/O error.
 */
public final class Validate {
  private Validate() {}

  public static void main(String[] args) {
    // Before any logger exists: the validator's own start-up chatter is not wanted on stderr.
    System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
    if (args.length == 0) {
      System.err.println("usage: Validate PATH...  (JSON files or directories of them)");
      System.exit(2);
    }
    PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    try {
      List<Path> files = new ArrayList<>();
      for (String arg : args) {
        files.addAll(jsonFiles(Path.of(arg)));
      }
      FhirValidator validator = validator(FhirContext.forR4());
      int messages = 0;
      for (Path file : files) {
        ValidationResult result = validator.validateWithResult(Files.readString(file));
        for (SingleValidationMessage message : result.getMessages()) {
          out.println(
              String.join(
                  "\t",
                  file.getFileName().toString(),
                  message.getSeverity().name(),
                  clean(message.getLocationString()),
                  clean(message.getMessageId()),
                  clean(message.getMessage())));
          messages++;
        }
      }
      out.println("#done " + files.size() + " " + messages);
    } catch (IOException | RuntimeException e) {
      System.err.println("fhir-validator: " + e);
      System.exit(2);
    }
  }

  /** Base R4 (structures, value sets, common code systems), snapshots generated on demand. */
  private static FhirValidator validator(FhirContext context) {
    ValidationSupportChain support =
        new ValidationSupportChain(
            new DefaultProfileValidationSupport(context),
            new CommonCodeSystemsTerminologyService(context),
            new InMemoryTerminologyServerValidationSupport(context),
            new SnapshotGeneratingValidationSupport(context));
    FhirInstanceValidator instanceValidator = new FhirInstanceValidator(support);
    // fr-core's package cannot be loaded here (docs/fhir.md): its profiles in meta.profile are
    // reported as not checked (a warning the caller expects) rather than as errors.
    instanceValidator.setErrorForUnknownProfiles(false);
    FhirValidator validator = context.newValidator();
    validator.registerValidatorModule(instanceValidator);
    return validator;
  }

  private static List<Path> jsonFiles(Path path) throws IOException {
    if (!Files.isDirectory(path)) {
      if (!Files.isRegularFile(path)) {
        throw new IOException("no such file: " + path);
      }
      return List.of(path);
    }
    try (Stream<Path> children = Files.list(path)) {
      return children.filter(p -> p.toString().endsWith(".json")).sorted().toList();
    }
  }

  /** One line per message: tabs and line breaks inside a field become spaces. */
  private static String clean(String text) {
    return text == null ? "" : text.replaceAll("[\\t\\r\\n]+", " ");
  }
}
